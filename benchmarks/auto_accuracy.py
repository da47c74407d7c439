"""Cost to accuracy: target-gradient evaluations until the fit is right.

    python -m benchmarks.auto_accuracy [--targets eight_schools,banana] [--quick]
        [--standin] [--no-write] [--methods auto_fit,pathfinder,stochastic,nuts]
        [--json rows.json]
    python -m benchmarks.auto_accuracy --merge a.json,b.json

`--methods` runs a subset; `--json` writes the rows to a file (not
RESULTS.md); `--merge` writes the table of several such runs (RESULTS.md:
two runs at once on the two cores, each with its half of the targets).

"Right" (issue 12's acceptance): from 4000 draws of the fitted posterior,
pushed into the latents' support (`benchmarks.auto_targets`), every mean is
within 0.1 reference sd and every sd within 10% of the reference sd. Methods
(`benchmarks.auto_methods`), all on the same target (the peers on its flat
unconstrained density):

* `vi_jax auto_fit`: `vi.auto_fit(target_log_prob_fn, event_shape, bijector,
  key=...)` with default settings, one call; its `result.sample(key, 4000)`
  and `result.num_grad_evals` (value-and-gradient evaluations; its
  Pathfinder's ELBO draws and the verdicts' draws need the log density alone
  and are not counted, as for Blackjax's pathfinder below). Skipped with a
  note when `vi.auto_fit` does not exist; `--standin` puts `vi.fit`
  (full-rank, Adam 1e-2, S = 16, 2000 steps) behind the same interface to
  exercise the harness.
* Blackjax `pathfinder` (one path) and multi-path Pathfinder (4 paths from
  uniform(-2, 2) starts, 1000 draws per path pooled and PSIS-resampled by
  `blackjax.vi.multipathfinder`'s `sample`): L-BFGS `maxiter` 30, 100, 300
  until the accuracy holds. Gradient evaluations are counted as they happen
  (a host callback in the gradient); the ELBO's draws, which need the log
  density only, are reported apart ("+N density").
* Blackjax `meanfield_vi` / `fullrank_vi` and NumPyro `AutoNormal` /
  `AutoMultivariateNormal` (`benchmarks.peers`' builders: loc 0, scale 0.1,
  S draws per step), Adam at each of 1e-1, 1e-2, 1e-3 (one compiled program
  per method: the rate lives in `optax.inject_hyperparams`' state); accuracy
  checked after 100, 200, 400, ... steps up to a cap; the cost is steps x S at
  the first check that passes, the best learning rate's row is reported.
* NumPyro NUTS (default settings: 1000 warmup, 4 chains from uniform(-2, 2)),
  the reference row: accuracy from the first 100, 200, 500, 1000 draws of each
  chain, cost = leapfrog steps of all chains, warmup included.

Wall time is the fit's (compile included, accuracy checks excluded; the
stochastic peers' one compile is counted in every learning rate's time); NUTS's
is its whole run. Results go to benchmarks/RESULTS.md, section "## Automatic
VI: cost to accuracy" (only that section is replaced).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import jax

from benchmarks import auto_methods
from benchmarks import auto_targets
from benchmarks import peers
from benchmarks import report

LEARNING_RATES = (1e-1, 1e-2, 1e-3)
SECTION = "## Automatic VI: cost to accuracy"
RESULTS = os.path.join(os.path.dirname(__file__), "RESULTS.md")


class Config(NamedTuple):
  sample_size: int = 8  # S of the stochastic peers
  max_steps: int = 6400  # last accuracy check of the stochastic peers
  learning_rates: tuple = LEARNING_RATES
  pathfinder_maxiter: tuple = (30, 100, 300)
  num_paths: int = 4
  nuts_warmup: int = 1000
  nuts_draws: tuple = (100, 200, 500, 1000)


QUICK = Config(max_steps=400, learning_rates=(1e-1,),
               pathfinder_maxiter=(30,), num_paths=2, nuts_warmup=200,
               nuts_draws=(100, 200))
QUICK_TARGETS = ("german_credit", "banana")


# ---- driver ----


METHODS = ("auto_fit", "pathfinder", "stochastic", "nuts")


def measure_target(name, config, standin=False, methods=METHODS) -> list:
  """The rows of `methods` on target `name`; prints each as it is done."""
  target = auto_targets.get(name)
  runs = []
  if "auto_fit" in methods:
    runs.append(lambda: [auto_methods.run_auto_fit(target, standin)])
  if "pathfinder" in methods:
    runs.append(lambda: auto_methods.run_pathfinder(target, config))
  if "stochastic" in methods:
    runs += [
        lambda lib=lib, fam=fam: [
            auto_methods.run_stochastic(target, lib, fam, config)]
        for lib in ("blackjax", "numpyro") for fam in peers.FAMILIES]
  if "nuts" in methods:
    runs.append(lambda: [auto_methods.run_nuts(target, config)])
  rows = []
  for run in runs:
    t0 = time.perf_counter()
    new = run()
    for r in new:
      print(f"  {name} / {r.method}: {'reached' if r.reached else 'not reached'}"
            f" at {r.grad_evals} grad evals ({time.perf_counter() - t0:.1f} s "
            "with its accuracy checks)", flush=True)
    rows += new
  return rows


def _in_subprocess(name, args) -> list:
  """Runs one float64 target in a child process with JAX_ENABLE_X64=1."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "rows.json")
    cmd = [sys.executable, "-m", "benchmarks.auto_accuracy", "--targets", name,
           "--json", out, "--methods", args.methods] + (
               ["--quick"] if args.quick else []) + (
                   ["--standin"] if args.standin else [])
    env = dict(os.environ, JAX_ENABLE_X64="1")
    subprocess.run(cmd, check=True, env=env)
    with open(out) as f:
      return [auto_methods.Row(*r) for r in json.load(f)]


HEADER = ("target", "method", "reached", "grad evals", "wall s",
          "max |mean err|/sd", "max |sd ratio - 1|", "notes")


def table(rows) -> str:
  body = [(r.target, r.method, "yes" if r.reached else "**no**",
           r.grad_evals if r.reached else f"not reached ({r.grad_evals})",
           r.wall_s, r.max_mean_err, r.max_sd_err, r.note) for r in rows]
  return report.markdown_table(HEADER, body)


def summary(rows) -> str:
  methods = list(dict.fromkeys(r.method for r in rows))
  lines = []
  for m in methods:
    mine = [r for r in rows if r.method == m]
    ok = [r for r in mine if r.reached]
    lines.append(f"- {m}: reached on {len(ok)} of {len(mine)} targets"
                 + (f" ({', '.join(r.target for r in ok)})" if ok else ""))
  return "\n".join(lines)


def comparison(rows) -> str:
  """Per target: vi_jax's outcome against issue 12's acceptance and the
  cheapest peer (NUTS excluded) that reached the accuracy."""
  body = []
  for target in dict.fromkeys(r.target for r in rows):
    mine = [r for r in rows if r.target == target]
    auto = next((r for r in mine if r.method.startswith("vi_jax")), None)
    reached = [r for r in mine if r.reached and not r.method.startswith(
        ("vi_jax", "NumPyro NUTS"))]
    nuts = next((r for r in mine if r.method.startswith("NumPyro NUTS")), None)
    best = min(reached, key=lambda r: r.grad_evals) if reached else None
    if auto is None:
      outcome = "not run"
    elif auto.reached:
      outcome = (f"accurate ({auto.grad_evals:,} evals; "
                 f"{auto.note.split(', family')[0]})")
      if best is not None:
        outcome += (" fewer evals than every peer that reached it"
                    if auto.grad_evals < best.grad_evals else
                    f" MORE evals than {best.method}")
    elif "reliable=False" in auto.note:
      outcome = "says unreliable (" + auto.note.split(", family")[0] + ")"
    else:
      outcome = "**WRONG and called reliable**"
    body.append((target, outcome,
                 f"{best.method} ({best.grad_evals:,})" if best else "none",
                 ("yes" if nuts.reached else "no") if nuts else "-"))
  return report.markdown_table(
      ("target", "vi_jax auto_fit", "cheapest peer that reached it",
       "NUTS (4 chains, <= 1000 draws each) reached it"), body)


def write_section(text: str, path: str = RESULTS):
  """Replaces (or appends) the SECTION of RESULTS.md; keeps the rest."""
  with open(path) as f:
    old = f.read()
  start = old.find(SECTION)
  if start < 0:
    new = old.rstrip("\n") + "\n\n" + text
  else:
    end = old.find("\n## ", start + len(SECTION))
    rest = "\n" + old[end + 1:] if end >= 0 else ""
    new = old[:start] + text.rstrip("\n") + "\n" + rest
  with open(path, "w") as f:
    f.write(new.rstrip("\n") + "\n")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--targets", default=None,
                      help="comma-separated keys of auto_targets.TARGETS")
  parser.add_argument("--quick", action="store_true",
                      help=f"{', '.join(QUICK_TARGETS)}, short caps")
  parser.add_argument("--standin", action="store_true",
                      help="vi.fit full-rank in place of a missing vi.auto_fit")
  parser.add_argument("--no-write", action="store_true")
  parser.add_argument("--methods", default=",".join(METHODS),
                      help=f"comma-separated subset of {METHODS}")
  parser.add_argument("--json", help="write the rows here (not RESULTS.md)")
  parser.add_argument("--merge", help="comma-separated --json files: write "
                      "their rows to RESULTS.md, run nothing")
  args = parser.parse_args(argv)
  if args.merge:
    return _merge(args.merge.split(","), args.no_write)
  config = QUICK if args.quick else Config()
  names = (args.targets.split(",") if args.targets else
           list(QUICK_TARGETS) if args.quick else
           list(auto_targets.TARGETS))
  rows, start = [], time.perf_counter()
  for name in names:
    t0 = time.perf_counter()
    if name in auto_targets.X64_TARGETS and not jax.config.jax_enable_x64:
      new = _in_subprocess(name, args)
    else:
      new = measure_target(name, config, args.standin,
                           args.methods.split(","))
    rows += new
    print(table(new), f"\n{name}: {time.perf_counter() - t0:.1f} s\n",
          flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump([list(r) for r in rows], f)
    return rows
  command = (f"python -m benchmarks.auto_accuracy"
             f"{' --quick' if args.quick else ''}"
             f"{' --standin' if args.standin else ''}")
  return _write(rows, f"`{command}` ({time.perf_counter() - start:.0f} s in "
                "all)", args.no_write)


def _merge(paths, no_write) -> list:
  """Rows of several `--json` runs, ordered by target and method."""
  rows = []
  for path in paths:
    with open(path) as f:
      rows += [auto_methods.Row(*r) for r in json.load(f)]
  # auto_targets' order, then any other target in order of appearance
  titles = list(dict.fromkeys(
      [t for t in auto_targets.TARGETS if t in {r.target for r in rows}] +
      [r.target for r in rows]))
  order = {"vi_jax": 0, "Blackjax pathfinder": 1, "Blackjax multi": 2,
           "Blackjax": 3, "NumPyro AutoNormal": 4, "NumPyro Auto": 5,
           "NumPyro NUTS": 6}

  def rank(r):
    t = titles.index(r.target)
    m = min((v for k, v in order.items() if r.method.startswith(k)),
            default=len(order))
    return (t, m, r.method)

  rows.sort(key=rank)
  return _write(
      rows, "Two runs at once, each pinned to one core and running every "
      "method on its targets, one target after another (`taskset -c N "
      "python -m benchmarks.auto_accuracy --targets ... --json FILE`; the "
      "targets of each are in its file), merged by "
      f"`--merge {','.join(paths)}`; the date and machine below are the "
      "merge's", no_write)


def _write(rows, how: str, no_write: bool) -> list:
  text = (f"{SECTION}\n\n{how}. Accuracy: from "
          f"{auto_methods.NUM_DRAWS} draws, every mean within "
          f"{auto_methods.MEAN_TOL} reference sd and every sd within "
          f"{auto_methods.SD_TOL:.0%}; see the module docstring for what "
          f"each method ran and how its cost is counted.\n\n"
          f"{report.machine_description()}\n{table(rows)}\n\n{summary(rows)}"
          f"\n\n{comparison(rows)}\n")
  print(summary(rows))
  if not no_write:
    write_section(text)
  return rows


if __name__ == "__main__":
  main()
