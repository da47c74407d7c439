"""Regenerates `benchmarks/posteriordb/data/*.npz` from a posteriordb snapshot.

    python -m benchmarks.posteriordb.extract [--source PATH] [--commit SHA]

`--source` is either a bare git directory of github.com/stan-dev/posteriordb
(read with `git show COMMIT:path`; the default is the mirror that `fetch`
brings, `/work/.mirror/stan-dev+posteriordb/repo`) or a checkout (a folder
holding `posterior_database/`, read as plain files; `--commit` is then only
recorded). The shipped files were made from commit
`28f8d3d6e975315f42aa274a8399f21e07a43b30` (2025-04-29).

For each posterior in `POSTERIORS`, one `data/<posterior>.npz` holds:

  * `data.<field>`: the model's data (`posterior_database/data/data/<data>.json.zip`),
    every field as an array (ints stay ints);
  * `draws.<param>`: 1000 reference draws (every 10th of the 10 x 1000 in
    `reference_posteriors/draws/draws/<posterior reference>.json.zip`, chains
    concatenated), `[1000, *shape]`, of the parameters of the Stan model's
    `parameters` block, in that model's parameterization (see the converters);
  * `ref_mean`, `ref_sd`: mean and sd over all 10000 reference draws, flat in
    `jax.tree_util.tree_leaves` order of a draw (parameters by sorted name,
    each row-major);
  * `meta`: a JSON string (posterior, model, data and reference names, commit,
    the number of draws).

Converters, where the reference holds other quantities than the parameters:

  * eight_schools_noncentered: the reference holds `theta`, `mu`, `tau`; the
    parameter is `theta_trans = (theta - mu) / tau`.
  * eight_schools_centered: posteriordb's reference for it is the
    non-centered model's (the same posterior of `theta`, `mu`, `tau`).
  * gp_pois_regr: the reference holds `f`; the parameter is
    `f_tilde = L^-1 f` with `L = cholesky(gp_exp_quad_cov(x, alpha, rho) + 1e-10 I)`
    (float64; the draws carry 15 significant digits).
  * garch11: `beta1`'s upper bound `1 - alpha1` depends on `alpha1`, so the two
    are one parameter `alpha1_beta1 = [alpha1, beta1]` with one bijector
    (`targets.GarchStickBreaking`, Stan's transform).
"""

import argparse
import io
import json
import os
import re
import subprocess
import zipfile

import numpy as np

POSTERIORDB_COMMIT = "28f8d3d6e975315f42aa274a8399f21e07a43b30"
DEFAULT_SOURCE = "/work/.mirror/stan-dev+posteriordb/repo"
DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
NUM_THINNED = 1000


def _identity(draws, data):
  del data
  return draws


def _eight_schools_noncentered(draws, data):
  del data
  mu, tau = draws["mu"][:, None], draws["tau"][:, None]
  return {"theta_trans": (draws["theta"] - mu) / tau, "mu": draws["mu"], "tau": draws["tau"]}


def _gp_pois_regr(draws, data):
  x = np.asarray(data["x"], np.float64)
  sq = (x[:, None] - x[None, :]) ** 2
  alpha, rho, f = draws["alpha"], draws["rho"], draws["f"]
  cov = (alpha[:, None, None] ** 2 * np.exp(-0.5 * sq / rho[:, None, None] ** 2)
         + 1e-10 * np.eye(len(x)))
  chol = np.linalg.cholesky(cov)
  f_tilde = np.stack([np.linalg.solve(l, v) for l, v in zip(chol, f)])
  return {"alpha": alpha, "rho": rho, "f_tilde": f_tilde}


def _garch11(draws, data):
  del data
  return {"mu": draws["mu"], "alpha0": draws["alpha0"],
          "alpha1_beta1": np.stack([draws["alpha1"], draws["beta1"]], -1)}


# posteriordb posterior name -> converter (reference draws -> the parameters).
POSTERIORS = {
    "kidiq-kidscore_momiq": _identity,
    "kidiq-kidscore_interaction": _identity,
    "earnings-earn_height": _identity,
    "earnings-logearn_interaction": _identity,
    "mesquite-mesquite": _identity,
    "kilpisjarvi_mod-kilpisjarvi": _identity,
    "nes2000-nes": _identity,
    "sblrc-blr": _identity,
    "diamonds-diamonds": _identity,
    "arma-arma11": _identity,
    "garch-garch11": _garch11,
    "arK-arK": _identity,
    "hmm_example-hmm_example": _identity,
    "low_dim_gauss_mix-low_dim_gauss_mix": _identity,
    "gp_pois_regr-gp_regr": _identity,
    "gp_pois_regr-gp_pois_regr": _gp_pois_regr,
    "eight_schools-eight_schools_noncentered": _eight_schools_noncentered,
    "eight_schools-eight_schools_centered": _identity,
}


class Source:
  """Reads posteriordb files from a bare git directory or a checkout."""

  def __init__(self, path: str, commit: str):
    self.path, self.commit = path, commit
    self.is_checkout = os.path.isdir(os.path.join(path, "posterior_database"))

  def read(self, rel: str) -> bytes:
    """The bytes of `posterior_database/<rel>`."""
    full = "posterior_database/" + rel
    if self.is_checkout:
      with open(os.path.join(self.path, full), "rb") as f:
        return f.read()
    return subprocess.run(["git", "--git-dir", self.path, "show", f"{self.commit}:{full}"],
                          check=True, capture_output=True).stdout

  def json(self, rel: str):
    """A JSON file, or the one JSON file inside a `.json.zip`."""
    raw = self.read(rel)
    if rel.endswith(".zip"):
      with zipfile.ZipFile(io.BytesIO(raw)) as z:
        raw = z.read(z.namelist()[0])
    return json.loads(raw)


def _columns_to_arrays(chains: list) -> dict:
  """posteriordb's `[{"beta[1]": [...], ...} per chain]` -> {"beta": [n, 2], ...}."""
  names = list(chains[0])
  groups = {}
  for name in names:
    m = re.fullmatch(r"([^\[]+)(?:\[([0-9,]+)\])?", name)
    base, index = m.group(1), m.group(2)
    idx = tuple(int(i) - 1 for i in index.split(",")) if index else ()
    groups.setdefault(base, []).append((idx, name))
  out = {}
  for base, items in groups.items():
    values = {idx: np.concatenate([np.asarray(c[name], np.float64) for c in chains])
              for idx, name in items}
    if items[0][0] == ():
      out[base] = values[()]
      continue
    shape = tuple(max(i[d] for i in values) + 1 for d in range(len(items[0][0])))
    arr = np.empty((len(next(iter(values.values()))),) + shape)
    for idx, v in values.items():
      arr[(slice(None),) + idx] = v
    out[base] = arr
  return out


def _flat(params: dict) -> np.ndarray:
  """[n, num_ref]: parameters by sorted name, each row-major (jax's leaf order)."""
  n = len(next(iter(params.values())))
  return np.concatenate([params[k].reshape(n, -1) for k in sorted(params)], axis=-1)


def extract(source: Source, name: str, out_dir: str = DATA_DIR) -> str:
  """Writes `out_dir/<name>.npz` for posterior `name`; returns its path."""
  post = source.json(f"posteriors/{name}.json")
  ref_name = post["reference_posterior_name"]
  data = source.json(f"data/data/{post['data_name']}.json.zip")
  chains = source.json(f"reference_posteriors/draws/draws/{ref_name}.json.zip")
  draws = POSTERIORS[name](_columns_to_arrays(chains), data)
  flat = _flat(draws)
  n = flat.shape[0]
  keep = np.arange(0, n, n // NUM_THINNED)[:NUM_THINNED]
  arrays = {f"data.{k}": np.asarray(v) for k, v in data.items()}
  arrays.update({f"draws.{k}": v[keep] for k, v in draws.items()})
  arrays["ref_mean"] = flat.mean(0)
  arrays["ref_sd"] = flat.std(0, ddof=1)
  meta = {"posterior": name, "model": post["model_name"], "data": post["data_name"],
          "reference": ref_name, "posteriordb_commit": source.commit,
          "num_reference_draws": int(n), "num_chains": len(chains),
          "num_thinned_draws": int(len(keep))}
  arrays["meta"] = np.asarray(json.dumps(meta))
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{name}.npz")
  np.savez_compressed(path, **arrays)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", default=DEFAULT_SOURCE)
  parser.add_argument("--commit", default=POSTERIORDB_COMMIT)
  parser.add_argument("--out", default=DATA_DIR)
  parser.add_argument("names", nargs="*", help="posteriors (default: all of POSTERIORS)")
  args = parser.parse_args()
  source = Source(args.source, args.commit)
  for name in args.names or POSTERIORS:
    path = extract(source, name, args.out)
    print(f"{path}: {os.path.getsize(path) / 1024:.0f} KiB")


if __name__ == "__main__":
  main()
