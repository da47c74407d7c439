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
within 0.1 reference sd and every sd within 10% of the reference sd. Methods,
all on the same target (the peers on its flat unconstrained density):

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
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import auto_targets
from benchmarks import common
from benchmarks import peers

NUM_DRAWS = 4000
MEAN_TOL = 0.1  # |mean err| / reference sd
SD_TOL = 0.1  # |sd / reference sd - 1|
LEARNING_RATES = (1e-1, 1e-2, 1e-3)
CHUNK = 100  # steps per compiled chunk of the stochastic fits
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


class Row(NamedTuple):
  target: str
  method: str
  reached: bool
  grad_evals: int  # at the first passing check, else at the last one
  wall_s: float
  max_mean_err: float  # over coordinates, / reference sd
  max_sd_err: float  # max |sd / reference sd - 1|
  note: str


def accuracy(target, flat_draws) -> tuple[float, float]:
  """(max |mean err| / sd, max |sd ratio - 1|) of `[n, num_ref]` draws."""
  z = np.asarray(flat_draws, np.float64)
  if not np.all(np.isfinite(z)):
    return float("inf"), float("inf")
  mean_err = np.abs(z.mean(0) - target.ref_mean) / target.ref_std
  sd_err = np.abs(z.std(0, ddof=1) / target.ref_std - 1)
  return float(mean_err.max()), float(sd_err.max())


def passes(errors) -> bool:
  return errors[0] <= MEAN_TOL and errors[1] <= SD_TOL


# ---- stochastic Gaussian VI peers, stepped in compiled chunks ----


def _adam(learning_rate):
  return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


def _peer_stepper(target, library, family, sample_size):
  """(init(lr, key) -> state, chunk(state, key) -> state, fitted(state))."""
  if library == "blackjax":
    alg, _ = peers.blackjax_vi(target, family, _adam(1e-2), sample_size)

    def init(lr, key):
      del key
      return peers.blackjax_vi(target, family, _adam(lr), sample_size)[1]

    step = lambda state, k: alg.step(k, state)[0]
    fitted = lambda state: peers.blackjax_fitted(state, family, None)
  else:
    svi = peers.numpyro_svi(target, family, _adam(1e-2), sample_size)
    svi.init(jax.random.key(0))  # sets up the guide; states come from `init`

    def init(lr, key):
      return peers.numpyro_svi(target, family, _adam(lr), sample_size).init(key)

    step = lambda state, k: svi.update(state)[0]
    fitted = lambda state: peers.numpyro_fitted(svi.get_params(state), family,
                                                None)

  @jax.jit
  def chunk(state, key):
    return jax.lax.scan(lambda s, k: (step(s, k), None), state,
                        jax.random.split(key, CHUNK))[0]

  return init, chunk, jax.jit(fitted)


def _checks(max_steps):
  steps, s = [], CHUNK
  while s <= max_steps:
    steps.append(s)
    s *= 2
  return steps


def run_stochastic(target, library, family, config) -> Row:
  """The best learning rate's cost to accuracy (see the module docstring)."""
  init, chunk, fitted = _peer_stepper(target, library, family,
                                      config.sample_size)
  draw = jax.jit(lambda f, k: target.constrain(peers.gaussian_draws(
      f, k, NUM_DRAWS)[0]))
  key = jax.random.key(0)
  t0 = time.perf_counter()
  chunk = chunk.lower(init(1e-2, key), key).compile()
  compile_s = time.perf_counter() - t0
  best, notes = None, []
  for lr in config.learning_rates:
    wall, done, row = compile_s, 0, None
    t0 = time.perf_counter()
    state = jax.block_until_ready(init(lr, key))
    wall += time.perf_counter() - t0
    for check in _checks(config.max_steps):
      while done < check:
        t0 = time.perf_counter()
        state = jax.block_until_ready(chunk(state, jax.random.fold_in(key,
                                                                      done)))
        wall += time.perf_counter() - t0
        done += CHUNK
      err = accuracy(target, draw(fitted(state), jax.random.key(1)))
      row = (passes(err), done * config.sample_size, wall, *err)
      if row[0]:
        break
    notes.append(f"lr {lr:g}: " + ("reached" if row[0] else
                                   f"{max(row[3], row[4]):.2g}"))
    if best is None or _better(row, best[1]):
      best = (lr, row)
  lr, (ok, evals, wall, e_mean, e_sd) = best
  name = {"blackjax": "Blackjax ", "numpyro": "NumPyro "}[library] + (
      {"mean-field": "meanfield_vi", "full-rank": "fullrank_vi"}[family]
      if library == "blackjax" else
      {"mean-field": "AutoNormal", "full-rank": "AutoMultivariateNormal"}[
          family])
  return Row(target.name, name, ok, evals, wall, e_mean, e_sd,
             f"best lr {lr:g}, S={config.sample_size}; " + ", ".join(notes))


def _better(row, best) -> bool:
  if row[0] != best[0]:
    return row[0]
  if row[0]:
    return row[1] < best[1]
  return max(row[3], row[4]) < max(best[3], best[4])


# ---- Blackjax Pathfinder, one path and multi-path ----


def _counting(log_prob, counter):
  """`log_prob` whose gradient evaluations add 1 to `counter[0]` on the host."""

  def bump():
    counter[0] += 1

  @jax.custom_vjp
  def f(u):
    return log_prob(u)

  def fwd(u):
    value, grad = jax.value_and_grad(log_prob)(u)
    jax.debug.callback(bump)
    return value, grad

  f.defvjp(fwd, lambda grad, ct: (ct * grad,))
  return f


def run_pathfinder(target, config) -> list:
  """Rows for Blackjax pathfinder (path 0) and multi-path (all paths)."""
  from blackjax.vi import multipathfinder, pathfinder  # pylint: disable=g-import-not-at-top
  counter = [0]
  log_p = _counting(target.unconstrained_log_prob, counter)
  inits = jax.random.uniform(jax.random.key(2), (config.num_paths, target.dim),
                             target.dtype, -2., 2.)
  keys = jax.random.split(jax.random.key(3), config.num_paths)
  pool = 1000
  single = multi = None
  for maxiter in config.pathfinder_maxiter:
    approx = jax.jit(lambda k, x0, m=maxiter: pathfinder.approximate(
        k, log_p, x0, 200, maxiter=m)[0])
    draw = jax.jit(lambda k, s, n: pathfinder.sample(k, s, n), static_argnums=2)
    states, evals, walls = [], [], []
    for i in range(config.num_paths):
      counter[0] = 0
      t0 = time.perf_counter()
      states.append(jax.block_until_ready(approx(keys[i], inits[i])))
      walls.append(time.perf_counter() - t0)
      evals.append(counter[0])
    density = (maxiter + 1) * 200
    u0 = draw(jax.random.key(4), states[0], NUM_DRAWS)[0]
    err = accuracy(target, target.constrain(u0))
    single = Row(target.name, "Blackjax pathfinder", passes(err), evals[0],
                 walls[0], *err, f"maxiter {maxiter}, +{density} density")
    t0 = time.perf_counter()
    draws = [draw(jax.random.fold_in(jax.random.key(5), i), s, pool)
             for i, s in enumerate(states)]
    samples = jnp.stack([d[0] for d in draws])
    state = multipathfinder.MultipathfinderState(
        jax.tree.map(lambda *x: jnp.stack(x), *states), samples,
        jax.vmap(jax.vmap(target.unconstrained_log_prob))(samples),
        jnp.stack([d[1] for d in draws]))
    api = multipathfinder.as_top_level_api(target.unconstrained_log_prob)
    u = jax.block_until_ready(api.sample(jax.random.key(6), state, NUM_DRAWS))
    k_hat = float(multipathfinder.psis_weights(state)[1])
    err = accuracy(target, target.constrain(u))
    multi = Row(target.name, "Blackjax multi-path pathfinder", passes(err),
                sum(evals), sum(walls) + time.perf_counter() - t0, *err,
                f"{config.num_paths} paths, maxiter {maxiter}, "
                f"+{config.num_paths * (density + pool)} density, "
                f"PSIS k-hat {k_hat:.2f}")
    if single.reached and multi.reached:
      break
  return [single, multi]


# ---- NumPyro NUTS, the reference row ----


def run_nuts(target, config) -> Row:
  t0 = time.perf_counter()
  u, steps, _ = auto_targets.nuts_draws(
      target.unconstrained_log_prob, target.dim, jax.random.key(7),
      config.nuts_warmup, max(config.nuts_draws), collect_warmup=True)
  wall = time.perf_counter() - t0
  steps = np.asarray(steps)
  warm = int(steps[:, :config.nuts_warmup].sum())
  for n in config.nuts_draws:
    err = accuracy(target, target.constrain(u[:, :n].reshape(-1, target.dim)))
    evals = warm + int(steps[:, config.nuts_warmup:config.nuts_warmup + n].sum())
    if passes(err):
      break
  return Row(target.name, "NumPyro NUTS (reference)", passes(err), evals, wall,
             *err, f"{u.shape[0]} chains x {n} draws, {config.nuts_warmup} "
             f"warmup (wall: whole run of {max(config.nuts_draws)} draws)")


# ---- vi_jax auto_fit ----


class _StandIn(NamedTuple):
  sample: object
  num_grad_evals: int
  reliable: bool
  k_hat: float
  family: str


def standin_auto_fit(target_log_prob_fn, event_shape, bijector=None, *, key,
                     num_steps=2000, sample_size=16):
  """vi.fit (full-rank, Adam 1e-2) behind auto_fit's interface (`--standin`)."""
  import vi_jax as vi  # pylint: disable=g-import-not-at-top
  surrogate = vi.surrogates.full_rank_normal(event_shape, bijector)
  fit_key, diag_key = jax.random.split(key)
  result = vi.fit(target_log_prob_fn, surrogate, optax.adam(1e-2), num_steps,
                  key=fit_key, sample_size=sample_size)
  diag = vi.diagnostics.diagnose(target_log_prob_fn, surrogate, result.params,
                                 diag_key)
  k_hat = float(diag.pareto_k)
  return _StandIn(
      lambda k, n: surrogate.sample_and_log_prob(result.params, k, n)[0],
      num_steps * sample_size, k_hat <= 0.7, k_hat, "full-rank")


def run_auto_fit(target, standin: bool) -> Row:
  import vi_jax as vi  # pylint: disable=g-import-not-at-top
  fn, name = getattr(vi, "auto_fit", None), "vi_jax auto_fit"
  if fn is None:
    if not standin:
      return Row(target.name, name, False, 0, float("nan"), float("nan"),
                 float("nan"), "skipped: vi.auto_fit does not exist yet")
    fn, name = standin_auto_fit, "vi_jax stand-in (vi.fit full-rank)"
  t0 = time.perf_counter()
  result = fn(target.target_log_prob_fn, target.event_shape, target.bijector,
              key=jax.random.key(0))
  z = jax.block_until_ready(result.sample(jax.random.key(1), NUM_DRAWS))
  wall = time.perf_counter() - t0
  err = accuracy(target, target.flatten_z(z))
  return Row(target.name, name, passes(err), int(result.num_grad_evals), wall,
             *err, f"reliable={bool(result.reliable)}, k-hat "
             f"{float(result.k_hat):.2f}, family {getattr(result, 'family', '?')}")


# ---- driver ----


METHODS = ("auto_fit", "pathfinder", "stochastic", "nuts")


def measure_target(name, config, standin=False, methods=METHODS) -> list:
  """The rows of `methods` on target `name`; prints each as it is done."""
  target = auto_targets.get(name)
  runs = []
  if "auto_fit" in methods:
    runs.append(lambda: [run_auto_fit(target, standin)])
  if "pathfinder" in methods:
    runs.append(lambda: run_pathfinder(target, config))
  if "stochastic" in methods:
    runs += [lambda lib=lib, fam=fam: [run_stochastic(target, lib, fam, config)]
             for lib in ("blackjax", "numpyro") for fam in peers.FAMILIES]
  if "nuts" in methods:
    runs.append(lambda: [run_nuts(target, config)])
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
      return [Row(*r) for r in json.load(f)]


HEADER = ("target", "method", "reached", "grad evals", "wall s",
          "max |mean err|/sd", "max |sd ratio - 1|", "notes")


def table(rows) -> str:
  body = [(r.target, r.method, "yes" if r.reached else "**no**",
           r.grad_evals if r.reached else f"not reached ({r.grad_evals})",
           r.wall_s, r.max_mean_err, r.max_sd_err, r.note) for r in rows]
  return common.markdown_table(HEADER, body)


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
  return common.markdown_table(
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
      rows += [Row(*r) for r in json.load(f)]
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
          f"{NUM_DRAWS} draws, every mean within {MEAN_TOL} reference sd and "
          f"every sd within {SD_TOL:.0%}; see the module docstring for what "
          f"each method ran and how its cost is counted.\n\n"
          f"{common.machine_description()}\n{table(rows)}\n\n{summary(rows)}"
          f"\n\n{comparison(rows)}\n")
  print(summary(rows))
  if not no_write:
    write_section(text)
  return rows


if __name__ == "__main__":
  main()
