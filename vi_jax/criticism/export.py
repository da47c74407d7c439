"""Getting a fit out: a plain summary table, and ArviZ `InferenceData` export.

`summary` needs nothing beyond NumPy; `to_inference_data` needs ArviZ (an
optional dependency: `pip install vi_jax[interop]`), imported when called.

Latent names: dict keys (nested dicts joined with "."), namedtuple fields,
`z_0, z_1, ...` for plain tuples and lists, and `z` for a single array, unless
`var_names` are given. A latent of shape `[3]` gives table rows `w[0]`, `w[1]`,
`w[2]` (ArviZ's row names) and an ArviZ variable `w` with dims
`(chain, draw, w_dim_0)`.
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import numpy as np

from vi_jax.criticism import diagnostics as diag_lib
from vi_jax._src import compile_cache
from vi_jax._src.types import Params, PRNGKey, PyTree
from vi_jax.model.target import batched_target
from vi_jax.surrogates.base import check_sample_size

__all__ = [
    "SummaryTable",
    "named_draws",
    "sample",
    "summary",
    "summary_from_draws",
    "to_inference_data",
]


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def named_draws(draws: PyTree,
                var_names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
  """Flattens a pytree of draws (leading `[S]`) into `{name: array [S, ...]}`.

  Args:
    draws: a pytree of arrays with a leading draw axis on every leaf.
    var_names: optional names, one per leaf in `jax.tree_util` leaf order.

  Returns:
    An insertion-ordered dict of NumPy arrays.

  Raises:
    ValueError: if `var_names` has the wrong length or duplicate names.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(draws)
  if var_names is not None:
    names = list(var_names)
    if len(names) != len(flat) or len(set(names)) != len(names):
      raise ValueError(
          f"var_names must hold {len(flat)} distinct names (one per latent); "
          f"got {names!r}.")
  elif treedef.num_leaves == 1 and not flat[0][0]:
    names = ["z"]
  else:
    names = []
    for path, _ in flat:
      parts = [_key_name(k) for k in path]
      if hasattr(path[0], "idx"):  # a tuple/list at the root: z_0, z_1, ...
        parts[0] = "z_" + parts[0]
      names.append(".".join(parts))
  return {n: np.asarray(x) for n, (_, x) in zip(names, flat)}


def sample(surrogate, params: Params, key: PRNGKey, num_draws: int, *,
           transform: Optional[Callable[[PyTree], PyTree]] = None) -> PyTree:
  """Draws from the surrogate, optionally mapped by `transform`.

  Args:
    surrogate: a `vi_jax.surrogates.Surrogate`.
    params: its params.
    key: a PRNG key.
    num_draws: Python int.
    transform: optional `z (leading [S]) -> pytree (leading [S])` (e.g. an
      adapter's `constrain`).

  Returns:
    A pytree with leading `[num_draws]` on every leaf.
  """
  num_draws = check_sample_size(num_draws)
  sample_fn = compile_cache.jitted(
      _sample, surrogate, num_draws, transform)
  return sample_fn(params, key)


def _sample(surrogate, num_draws, transform, params, key):
  z, _ = surrogate.sample_and_log_prob(params, key, num_draws)
  return transform(z) if transform is not None else z


def _draws_for_export(target_log_prob_fn, surrogate, num_draws, transform,
                      params, key):
  z, log_q = surrogate.sample_and_log_prob(params, key, num_draws)
  exported = transform(z) if transform is not None else z
  if target_log_prob_fn is None:
    return exported, log_q, None
  log_p = batched_target(target_log_prob_fn)(z)
  return exported, log_q, log_p


class SummaryTable(NamedTuple):
  """A per-component summary: one row per scalar entry of each latent.

  Attributes:
    names: row names, e.g. `["mu", "w[0]", "w[1]"]`.
    columns: column names, e.g. `("mean", "sd", "5%", "50%", "95%")`.
    values: `[len(names), len(columns)]` float64 NumPy array.
  """
  names: list
  columns: tuple
  values: np.ndarray

  def to_dict(self) -> dict:
    """`{row_name: {column: value}}`."""
    return {n: dict(zip(self.columns, map(float, row)))
            for n, row in zip(self.names, self.values)}

  def to_string(self, digits: int = 3) -> str:
    """The table as aligned text."""
    width = max([len(n) for n in self.names] + [4])
    cells = [[f"{v:.{digits}f}" for v in row] for row in self.values]
    colw = [max(len(c), *(len(r[j]) for r in cells))
            for j, c in enumerate(self.columns)]
    lines = [" " * width + "  " + "  ".join(
        c.rjust(w) for c, w in zip(self.columns, colw))]
    for n, row in zip(self.names, cells):
      lines.append(n.ljust(width) + "  " + "  ".join(
          v.rjust(w) for v, w in zip(row, colw)))
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.to_string()


def _row_names(name: str, shape: tuple) -> list[str]:
  if not shape:
    return [name]
  return [f"{name}[{', '.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


def summary_from_draws(draws: PyTree, *,
                       quantiles: Sequence[float] = (0.05, 0.5, 0.95),
                       var_names: Optional[Sequence[str]] = None) -> SummaryTable:
  """Mean, standard deviation and quantiles of each scalar entry of draws.

  Args:
    draws: a pytree with leading `[S]` on every leaf.
    quantiles: probabilities in [0, 1].
    var_names: optional names, one per leaf (see `named_draws`).

  Returns:
    A `SummaryTable` with columns `mean, sd` and one per quantile (`"5%"`).

  Raises:
    ValueError: a quantile outside [0, 1].
  """
  quantiles = tuple(float(q) for q in quantiles)
  if any(not 0. <= q <= 1. for q in quantiles):
    raise ValueError(f"quantiles must lie in [0, 1]; got {quantiles}.")
  names, rows = [], []
  for name, x in named_draws(draws, var_names).items():
    x = np.asarray(x, np.float64)
    flat = x.reshape(x.shape[0], -1)
    stats = [flat.mean(0), flat.std(0, ddof=1) if flat.shape[0] > 1 else
             np.zeros(flat.shape[1])]
    if quantiles:
      stats += list(np.quantile(flat, quantiles, axis=0))
    names += _row_names(name, x.shape[1:])
    rows.append(np.stack(stats, axis=1))
  columns = ("mean", "sd") + tuple(f"{100 * q:g}%" for q in quantiles)
  return SummaryTable(names=names, columns=columns,
                      values=np.concatenate(rows, axis=0))


def summary(surrogate, params: Params, key: PRNGKey, num_draws: int = 4000, *,
            transform: Optional[Callable[[PyTree], PyTree]] = None,
            quantiles: Sequence[float] = (0.05, 0.5, 0.95),
            var_names: Optional[Sequence[str]] = None) -> SummaryTable:
  """Summary table of the surrogate's draws in the constrained space.

  Args:
    surrogate: a `vi_jax.surrogates.Surrogate`.
    params: its (fitted) params.
    key: a PRNG key.
    num_draws: Python int, draws used for the Monte Carlo summaries.
    transform: optional `z (leading [S]) -> pytree` applied to the draws
      first (e.g. an adapter's `constrain`).
    quantiles: probabilities for the quantile columns.
    var_names: optional latent names, one per leaf.

  Returns:
    A `SummaryTable` (`print(table)` shows it).
  """
  draws = sample(surrogate, params, key, num_draws, transform=transform)
  return summary_from_draws(draws, quantiles=quantiles, var_names=var_names)


def to_inference_data(surrogate, params: Params, key: PRNGKey,
                      num_draws: int = 1000, *,
                      target_log_prob_fn: Optional[Callable[..., Any]] = None,
                      transform: Optional[Callable[[PyTree], PyTree]] = None,
                      loss_trace: Any = None, num_chains: int = 1,
                      var_names: Optional[Sequence[str]] = None):
  """Exports surrogate draws as an ArviZ `InferenceData`.

  Groups:
    * `posterior`: one variable per latent, `[chain, draw, *shape]`, the
      draws in the constrained space (after `transform`).
    * `sample_stats`: `log_q` (surrogate log density of each draw) and, with
      `target_log_prob_fn`, `log_p` and `log_weight = log_p - log_q` and the
      Pareto-smoothed normalized `psis_log_weight`.
    * `vi_trace` (when `loss_trace` is given): `loss` over dim `step`.

  With `target_log_prob_fn`, the importance-sampling diagnostics of these
  draws (`vi_jax.criticism.diagnostics.diagnose_log_weights`: `pareto_k`,
  `pareto_k_threshold`, `ess`, `psis_ess`, `log_z`, `log_z_se`, `elbo`) are
  stored as attributes of the `posterior` and `sample_stats` groups, with
  `pareto_k_message` (good / ok / bad, Yao et al. 2018).

  The draws are independent, so splitting them into `num_chains` pseudo-chains
  only serves ArviZ's chain-based summaries (`r_hat` is NaN for one chain and
  close to 1 otherwise; `ess_bulk` is close to the number of draws).

  Args:
    surrogate: a `vi_jax.surrogates.Surrogate`.
    params: its (fitted) params.
    key: a PRNG key.
    num_draws: Python int, total draws (divisible by `num_chains`).
    target_log_prob_fn: optional target (TFP's convention) for log weights and
      diagnostics; it takes the surrogate's draws (before `transform`).
    transform: optional `z (leading [S]) -> pytree (leading [S])` mapping
      draws to the exported variables (e.g. an adapter's `constrain`).
    loss_trace: optional `[num_steps]` loss values (`vi.fit(...).trace`).
    num_chains: Python int >= 1.
    var_names: optional names, one per exported leaf.

  Returns:
    `arviz.InferenceData`; `az.summary(idata)` and ArviZ plots work on it.

  Raises:
    ImportError: ArviZ is not installed.
    ValueError: `num_draws` not divisible by `num_chains`, bad `var_names`.
  """
  import arviz as az  # pylint: disable=g-import-not-at-top
  import xarray as xr  # pylint: disable=g-import-not-at-top

  num_draws = check_sample_size(num_draws)
  if not isinstance(num_chains, int) or num_chains < 1:
    raise ValueError(f"num_chains must be an int >= 1; got {num_chains!r}.")
  if num_draws % num_chains:
    raise ValueError(f"num_draws ({num_draws}) must be divisible by num_chains "
                     f"({num_chains}).")
  exported, log_q, log_p = compile_cache.jitted(
      _draws_for_export, target_log_prob_fn, surrogate, num_draws,
      transform)(params, key)
  per_chain = num_draws // num_chains

  def chains(x):
    x = np.asarray(x)
    return x.reshape((num_chains, per_chain) + x.shape[1:])

  posterior = {n: chains(x) for n, x in named_draws(exported,
                                                    var_names).items()}
  stats = {"log_q": chains(log_q)}
  attrs = {"inference_library": "vi_jax"}
  if target_log_prob_fn is not None:
    log_w = log_p - log_q
    d = diag_lib.diagnose_log_weights(log_w)
    stats.update(log_p=chains(log_p), log_weight=chains(log_w),
                 psis_log_weight=chains(diag_lib.psis(log_w).log_weights))
    attrs.update({f: float(getattr(d, f)) for f in d._fields})
    attrs["num_draws"] = int(d.num_draws)
    attrs["pareto_k_message"] = diag_lib.pareto_k_message(float(d.pareto_k))
  idata = az.from_dict(posterior=posterior, sample_stats=stats, attrs=attrs)
  for group in ("posterior", "sample_stats"):
    getattr(idata, group).attrs.update(attrs)
  if loss_trace is not None:
    loss = np.asarray(loss_trace)
    if loss.ndim != 1:
      raise ValueError(f"loss_trace must be [num_steps]; got shape {loss.shape}.")
    idata.add_groups({"vi_trace": xr.Dataset(
        {"loss": (("step",), loss)}, coords={"step": np.arange(loss.shape[0])})})
  return idata
