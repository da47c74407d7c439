"""Where `vi.auto_fit`'s time goes: tracing, lowering, XLA compiles and the run, per stage.

    python -m benchmarks.auto_fit_profile [--targets eight_schools,banana]
        [--posteriordb] [--nuts] [--json FILE]
    python -m benchmarks.auto_fit_profile --tables a.json,b.json

Each target runs in a FRESH Python process (`--child`), so every program is
traced and compiled as a new user's first call sees it (vi_jax's compile cache
and JAX's caches are per process; the child turns on no persistent compilation
cache, and the hits of one turned on from outside, e.g. by
JAX_COMPILATION_CACHE_DIR, are counted and reported). In that process
`vi.auto_fit(target_log_prob_fn, event_shape, bijector, key=jax.random.key(0))`
runs with its defaults, then `result.sample(key(1), 4000)`. The stage
functions of `vi_jax.auto.stages` (`laplace_stage`, `start` = "pathfinder",
`run_stage` = its `rung.family`, `refine_k_hat`) and `AutoFitResult.sample`
are wrapped (monkeypatched in the child; vi_jax is not edited) to name the
stage running, and a `jax.monitoring` duration listener adds each event to
that stage:

* trace: '/jax/core/compile/jaxpr_trace_duration' (Python tracing of a jit's
  function to a jaxpr; recorded for top-level traces only, so nested jits are
  not counted twice),
* lower: '/jax/core/compile/jaxpr_to_mlir_module_duration' (jaxpr to MLIR),
* compile: '/jax/core/compile/backend_compile_duration' (XLA); "compiles" is
  the number of these events (every jitted program and every eager op's
  first call on new shapes),
* run: the stage's wall time less the three (execution, host work between
  programs, transfers); on eight schools it matches a second call's wall time
  (all programs cached) within 0.1 s per stage,
* cpu: the process's CPU seconds in the stage (all threads; against the wall
  time, shows how much other jobs on the machine took).

"outside stages" is the rest of the `auto_fit` call (input checks: the target
on one draw; key splitting); "total" is `auto_fit` plus `sample`. Building the
target (data, inference_gym model) is timed apart and not counted. Accuracy
(`benchmarks.auto_methods.accuracy`) is from the 4000 draws: max |mean err| /
reference sd and max |sd / reference sd - 1| over the reference moments.

`--nuts` adds NumPyro NUTS (`benchmarks.auto_targets.nuts_draws`: 1 chain from
uniform(-2, 2), 1000 warmup + 1000 draws, default settings) on the flat
unconstrained density, in its own fresh process, compile included; its
accuracy is from its 1000 (autocorrelated) draws.

Targets: the 11 acceptance targets of `benchmarks.auto_targets`, or with
`--posteriordb` the 18 posteriors of `benchmarks.posteriordb.targets`. Targets
that need float64 (`auto_targets.X64_TARGETS`, posteriordb's `x64`) run with
JAX_ENABLE_X64=1. `--json` writes the raw numbers (per stage, per event name,
the largest compiles); `--tables` prints the markdown of saved `--json` files
without running anything.
"""

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import types

import jax
import numpy as np

from benchmarks import auto_methods
from benchmarks import auto_targets
from benchmarks import report

EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HITS = "/jax/compilation_cache/cache_hits"
NUM_DRAWS = auto_methods.NUM_DRAWS  # auto_fit's draws for the accuracy
NUTS_WARMUP = 1000
NUTS_DRAWS = 1000
TOP_COMPILES = 10  # largest backend compiles kept per run in the JSON
OUTSIDE = "outside stages"


# ---- the child process: one auto_fit or one NUTS run, instrumented ----


class Profiler:
  """Adds JAX's compile-event durations to the stage running (host state)."""

  def __init__(self):
    self.stage = "build target"
    self.order = []  # stage names, first seen first
    self.rows = {}  # stage -> {wall, trace, lower, compile, compiles, calls}
    self.event_names = {}  # every duration event seen -> count
    self.compiles = []  # (seconds, stage, fun_name) of each backend compile
    self.event_counts = {}  # plain events (persistent-cache requests, hits)
    jax.monitoring.register_event_duration_secs_listener(self._on_event)
    jax.monitoring.register_event_listener(self._on_plain_event)

  def row(self, stage: str) -> dict:
    if stage not in self.rows:
      self.order.append(stage)
      self.rows[stage] = dict(wall=0., cpu=0., trace=0., lower=0.,
                              compile=0., compiles=0, calls=0)
    return self.rows[stage]

  def _on_event(self, event, duration, **kwargs):
    self.event_names[event] = self.event_names.get(event, 0) + 1
    field = EVENTS.get(event)
    if field is None:
      return
    row = self.row(self.stage)
    row[field] += float(duration)
    if event == COMPILE_EVENT:
      row["compiles"] += 1
      self.compiles.append((float(duration), self.stage,
                            str(kwargs.get("fun_name", "?"))))

  def _on_plain_event(self, event, **kwargs):
    del kwargs
    self.event_counts[event] = self.event_counts.get(event, 0) + 1

  @contextlib.contextmanager
  def stage_named(self, name: str):
    """Events and wall time inside the block go to stage `name`."""
    outer, self.stage = self.stage, name
    row = self.row(name)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
      yield
    finally:
      row["wall"] += time.perf_counter() - t0
      row["cpu"] += time.process_time() - c0
      row["calls"] += 1
      self.stage = outer

  def wrap(self, fn, name_of, block=False):
    """`fn` run inside `stage_named(name_of(args, kwargs))`."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
      with self.stage_named(name_of(args, kwargs)):
        out = fn(*args, **kwargs)
        return jax.block_until_ready(out) if block else out

    return wrapped

  def result(self) -> dict:
    top = sorted(self.compiles, reverse=True)[:TOP_COMPILES]
    return dict(order=self.order, stages=self.rows,
                event_names=self.event_names, event_counts=self.event_counts,
                top_compiles=[dict(seconds=s, stage=st, fun_name=f)
                              for s, st, f in top])


def _run_stage_family(args, kwargs):
  rung = kwargs["rung"] if "rung" in kwargs else args[2]
  return rung.family


def _instrument(prof: Profiler):
  """Wraps vi_jax's auto_fit stages (in this process only) to name them."""
  from vi_jax.auto import automatic_vi  # pylint: disable=g-import-not-at-top
  from vi_jax.auto import stages as auto_stages  # pylint: disable=g-import-not-at-top
  auto_stages.laplace_stage = prof.wrap(auto_stages.laplace_stage,
                                        lambda a, k: "laplace")
  auto_stages.start = prof.wrap(auto_stages.start, lambda a, k: "pathfinder")
  auto_stages.run_stage = prof.wrap(auto_stages.run_stage, _run_stage_family)
  auto_stages.refine_k_hat = prof.wrap(auto_stages.refine_k_hat,
                                       lambda a, k: "refine_k_hat")
  automatic_vi.AutoFitResult.sample = prof.wrap(
      automatic_vi.AutoFitResult.sample, lambda a, k: "sample", block=True)


def _load(name: str, posteriordb: bool) -> types.SimpleNamespace:
  """The target's API, its flat unconstrained density and its reference."""
  if not posteriordb:
    t = auto_targets.get(name)
    return types.SimpleNamespace(
        name=name, dim=t.dim, target_log_prob_fn=t.target_log_prob_fn,
        event_shape=t.event_shape, bijector=t.bijector,
        unconstrained_log_prob=t.unconstrained_log_prob,
        constrain=t.constrain, flatten_z=t.flatten_z, ref_mean=t.ref_mean,
        ref_std=t.ref_std, kind=t.title)
  import vi_jax as vi  # pylint: disable=g-import-not-at-top
  from benchmarks.posteriordb import targets as pdb  # pylint: disable=g-import-not-at-top
  t = pdb.get(name)
  space = vi.bijectors.latent_space(t["event_shape"], t["bijector"])
  log_prob = t["target_log_prob_fn"]

  def unconstrained_log_prob(u):  # as pdb.stein_statistics
    z, ldj = space.forward_and_log_det(u[None])
    return log_prob(**{k: v[0] for k, v in z.items()}) + ldj[0]

  return types.SimpleNamespace(
      name=name, dim=t["dim"], target_log_prob_fn=log_prob,
      event_shape=t["event_shape"], bijector=t["bijector"],
      unconstrained_log_prob=unconstrained_log_prob,
      constrain=lambda u: t["flatten"](space.forward_and_log_det(u)[0]),
      flatten_z=t["flatten"], ref_mean=np.asarray(t["ref_mean"], np.float64),
      ref_std=np.asarray(t["ref_sd"], np.float64), kind=t["kind"])


def child_auto_fit(name: str, posteriordb: bool) -> dict:
  prof = Profiler()
  with prof.stage_named("build target"):
    target = _load(name, posteriordb)
  import vi_jax as vi  # pylint: disable=g-import-not-at-top
  _instrument(prof)
  prof.stage = OUTSIDE
  prof.row(OUTSIDE)
  t0, c0 = time.perf_counter(), time.process_time()
  result = vi.auto_fit(target.target_log_prob_fn, target.event_shape,
                       target.bijector, key=jax.random.key(0))
  fit_wall, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
  z = result.sample(jax.random.key(1), NUM_DRAWS)
  total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
  prof.stage = "accuracy check"
  err = auto_methods.accuracy(target, target.flatten_z(z))
  out = prof.result()
  stages = out["stages"]
  inside = sum(r["wall"] for s, r in stages.items()
               if s not in (OUTSIDE, "build target", "sample",
                            "accuracy check"))
  stages[OUTSIDE]["wall"] = fit_wall - inside
  stages[OUTSIDE]["cpu"] = fit_cpu - sum(
      r["cpu"] for s, r in stages.items()
      if s not in (OUTSIDE, "build target", "sample", "accuracy check"))
  stages[OUTSIDE]["calls"] = 1
  out.update(
      target=name, dim=int(target.dim), kind=target.kind, x64=bool(
          jax.config.jax_enable_x64), auto_fit_wall=fit_wall, total_wall=total,
      total_cpu=total_cpu,
      reliable=bool(result.reliable), family=result.family,
      k_hat=float(result.k_hat), num_grad_evals=int(result.num_grad_evals),
      max_mean_err=err[0], max_sd_err=err[1],
      history=[dict(family=r.family, method=r.method, k_hat=float(r.k_hat),
                    passed=bool(r.passed), wall_time=float(r.wall_time),
                    num_grad_evals=int(r.num_grad_evals), note=r.note)
               for r in result.history])
  return out


def child_nuts(name: str, posteriordb: bool) -> dict:
  prof = Profiler()
  with prof.stage_named("build target"):
    target = _load(name, posteriordb)
  t0, c0 = time.perf_counter(), time.process_time()
  with prof.stage_named("nuts"):
    # One chain: NumPyro keeps `init_params` [1, dim] as the parameter.
    u, steps, _ = auto_targets.nuts_draws(
        lambda u: target.unconstrained_log_prob(u.reshape(-1)), target.dim, jax.random.key(7),
        NUTS_WARMUP, NUTS_DRAWS, num_chains=1, collect_warmup=True)
    u = np.asarray(jax.block_until_ready(u))
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  prof.stage = "accuracy check"
  err = auto_methods.accuracy(target, target.constrain(u.reshape(-1, target.dim)))
  out = prof.result()
  out.update(target=name, dim=int(target.dim), wall=wall, cpu=cpu,
             leapfrog_steps=int(np.asarray(steps).sum()),
             max_mean_err=err[0], max_sd_err=err[1])
  return out


# ---- the parent: one fresh process per target and method ----


def _needs_x64(name: str, posteriordb: bool) -> bool:
  if not posteriordb:
    return name in auto_targets.X64_TARGETS
  from benchmarks.posteriordb import targets as pdb  # pylint: disable=g-import-not-at-top
  return bool(pdb.get(name)["x64"])


def _in_fresh_process(kind: str, name: str, posteriordb: bool) -> dict:
  """Runs `--child kind` on `name` in a new interpreter; its JSON dict."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "out.json")
    cmd = [sys.executable, "-m", "benchmarks.auto_fit_profile", "--child",
           kind, "--targets", name, "--json", path] + (
               ["--posteriordb"] if posteriordb else [])
    env = dict(os.environ)
    if _needs_x64(name, posteriordb):
      env["JAX_ENABLE_X64"] = "1"
    load = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)
    process_wall = time.perf_counter() - t0
    if proc.returncode != 0 or not os.path.exists(path):
      print(proc.stdout[-4000:], flush=True)
      errors = [line for line in proc.stdout.splitlines() if "Error" in line]
      return dict(target=name, error=f"exit {proc.returncode}: "
                  + (errors or ["?"])[-1][:300],
                  process_wall=process_wall, load_before=load)
    with open(path) as f:
      out = json.load(f)
  out.update(process_wall=process_wall, load_before=load,
             load_after=os.getloadavg(),
             x64=_needs_x64(name, posteriordb),
             warnings=[line for line in proc.stdout.splitlines()
                       if "Warning" in line][:5])
  return out


def _compile_s(row: dict) -> float:
  return row["trace"] + row["lower"] + row["compile"]


def stage_table(run: dict) -> str:
  """The per-stage markdown table of one target's runs."""
  fit, nuts = run.get("auto_fit"), run.get("nuts")
  header = ("stage", "wall s", "trace s", "lower s", "compile s", "compiles",
            "run s", "cpu s")
  body = []

  def line(label, r, wall, cpu=None):
    body.append((label, wall, r["trace"], r["lower"], r["compile"],
                 r["compiles"], wall - _compile_s(r),
                 r["cpu"] if cpu is None else cpu))

  if fit is not None and "error" not in fit:
    stages = fit["stages"]
    order = [s for s in fit["order"]
             if s not in ("build target", OUTSIDE, "accuracy check")]
    for s in order:
      calls, label = stages[s]["calls"], s
      if calls > 1:
        label = f"{s} ({calls} calls)"
      elif s == "refine_k_hat" and stages[s]["compiles"] == 0:
        label = f"{s} (not needed)"
      line(label, stages[s], stages[s]["wall"])
    line(OUTSIDE, stages[OUTSIDE], stages[OUTSIDE]["wall"])
    parts = [stages[s] for s in order + [OUTSIDE]]
    total = {k: sum(p[k] for p in parts) for k in ("trace", "lower",
                                                   "compile", "compiles")}
    body.append(("**auto_fit + sample**", fit["total_wall"], total["trace"],
                 total["lower"], total["compile"], total["compiles"],
                 fit["total_wall"] - _compile_s(total), fit["total_cpu"]))
  if nuts is not None and "error" not in nuts:
    line(f"NUTS, 1 chain, {NUTS_WARMUP} + {NUTS_DRAWS} (own process)",
         nuts["stages"]["nuts"], nuts["wall"], nuts["cpu"])
  return report.markdown_table(header, body)


def _verdict(fit: dict) -> str:
  return (f"{'reliable' if fit['reliable'] else 'unreliable'}, "
          f"{fit['family']}, k-hat {fit['k_hat']:.2f}")


def _acc(r: dict) -> str:
  ok = auto_methods.passes((r["max_mean_err"], r["max_sd_err"]))
  return (f"{r['max_mean_err']:.2f} / {r['max_sd_err']:.2f}"
          + ("" if ok else " **x**"))


def _cache_note(counts: dict) -> str:
  hits = counts.get(CACHE_HITS, 0)
  return (f" JAX's persistent compilation cache served {hits} programs (not a "
          "first call)." if hits else "")


def target_text(run: dict) -> str:
  """Heading line, stage table and notes of one target."""
  fit, nuts = run.get("auto_fit") or {}, run.get("nuts") or {}
  name = run["target"]
  lines = [f"**{name}**" + (f" ({fit['kind']}, {fit['dim']} dims"
                            f"{', float64' if fit.get('x64') else ''})"
                            if "kind" in fit else "")]
  if "error" in fit:
    lines.append(f"auto_fit failed: {fit['error']}")
  if "error" in nuts:
    lines.append(f"NUTS failed: {nuts['error']}")
  if fit and "error" not in fit:
    top = ", ".join(f"{c['fun_name']} ({c['stage']}) {c['seconds']:.1f} s"
                    for c in fit["top_compiles"][:3])
    lines.append(
        f"verdict: {_verdict(fit)}, {fit['num_grad_evals']:,} grad evals; "
        f"accuracy (max |mean err|/sd / max |sd ratio - 1|) {_acc(fit)}"
        + (f"; NUTS {_acc(nuts)}" if nuts and "error" not in nuts else "")
        + f". Building the target: {fit['stages']['build target']['wall']:.1f}"
        f" s (not counted). Largest XLA compiles: {top}. Load average before"
        f" the run: {fit['load_before'][0]:.2f}."
        + _cache_note(fit.get("event_counts", {})))
  lines.append("")
  lines.append(stage_table(run))
  return "\n".join(lines) + "\n"


SUMMARY_HEADER = (
    "target", "dims", "auto_fit wall s", "of which trace+lower+compile s",
    "compiles", "NUTS wall s (compile s)", "verdict",
    "auto_fit accuracy", "NUTS accuracy")


def summary_table(runs: list) -> str:
  body = []
  for run in runs:
    fit, nuts = run.get("auto_fit") or {}, run.get("nuts") or {}
    if "stages" not in fit:
      body.append((run["target"], "-", "failed", "-", "-", "-",
                   fit.get("error", "not run"), "-", "-"))
      continue
    parts = [r for s, r in fit["stages"].items()
             if s not in ("build target", "accuracy check")]
    c = sum(_compile_s(r) for r in parts)
    n = sum(r["compiles"] for r in parts)
    if "stages" in nuts:
      nuts_wall = (f"{nuts['wall']:.1f} "
                   f"({_compile_s(nuts['stages']['nuts']):.1f})")
      nuts_acc = _acc(nuts)
    else:
      nuts_wall = nuts_acc = nuts.get("error", "-")
    body.append((run["target"], fit["dim"], fit["total_wall"],
                 f"{c:.1f} ({c / fit['total_wall']:.0%})", n, nuts_wall,
                 _verdict(fit), _acc(fit), nuts_acc))
  return report.markdown_table(SUMMARY_HEADER, body)


def tables(runs: list) -> str:
  return ("\n".join(target_text(r) for r in runs) + "\nSummary (accuracy: "
          "max |mean err|/sd / max |sd ratio - 1|; **x**: outside 0.1 / 0.1):"
          "\n\n" + summary_table(runs) + "\n")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--targets", default=None,
                      help="comma-separated names (default: every target)")
  parser.add_argument("--posteriordb", action="store_true",
                      help="benchmarks.posteriordb's posteriors")
  parser.add_argument("--nuts", action="store_true",
                      help="also NumPyro NUTS, 1 chain, in its own process")
  parser.add_argument("--json", help="write the raw numbers here")
  parser.add_argument("--tables", help="comma-separated --json files: print "
                      "their tables, run nothing")
  parser.add_argument("--child", choices=("auto_fit", "nuts"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    fn = child_auto_fit if args.child == "auto_fit" else child_nuts
    out = fn(args.targets, args.posteriordb)
    print(f"{args.child} {args.targets}: JAX duration events seen: "
          f"{out['event_names']}", flush=True)
    with open(args.json, "w") as f:
      json.dump(out, f)
    return out
  if args.tables:
    runs = []
    for path in args.tables.split(","):
      with open(path) as f:
        runs += json.load(f)["runs"]
    print(tables(runs))
    return runs
  if args.targets:
    names = args.targets.split(",")
  elif args.posteriordb:
    from benchmarks.posteriordb import targets as pdb  # pylint: disable=g-import-not-at-top
    names = pdb.names()
  else:
    names = list(auto_targets.TARGETS)
  machine = report.machine_description()
  print(machine, flush=True)
  runs, seen, start = [], set(), time.perf_counter()
  for name in names:
    run = dict(target=name,
               auto_fit=_in_fresh_process("auto_fit", name, args.posteriordb))
    if args.nuts:
      run["nuts"] = _in_fresh_process("nuts", name, args.posteriordb)
    runs.append(run)
    new = set(run["auto_fit"].get("event_names", {})) - seen
    if new:
      print(f"JAX duration events (new): {sorted(new)}")
      seen |= new
    print(target_text(run), f"\n{name}: {time.perf_counter() - start:.0f} s "
          "so far\n", flush=True)
  print(summary_table(runs))
  elapsed = time.perf_counter() - start
  print(f"\n{len(names)} targets in {elapsed:.0f} s", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(command=" ".join(["python -m benchmarks.auto_fit_profile"]
                                      + (argv if argv is not None
                                         else sys.argv[1:])),
                     machine=machine, elapsed_s=elapsed,
                     event_names=sorted(seen), runs=runs), f, indent=1)
  return runs


if __name__ == "__main__":
  main()
