"""Step cost: vi_jax and its peers against the bare kernel, one process.

    python -m benchmarks.step_cost [--quick] [--targets eight_schools,banana]
        [--sample-sizes 1,16,128] [--peers-at-all-sizes] [--repeats 5]

For each target and sample size S, every method runs the same number of Adam
(lr 1e-2) steps on the same unconstrained space, the loss traced every step;
each is compiled once (`jax.jit(run).lower(key).compile()`, compile seconds
reported separately) and then timed `repeats` times, the methods interleaved.
Reported: median wall seconds per 1000 steps, the ratio to the bare kernel of
the same family, the timing noise ((max - min) / median over the repeats), the
ratio of the smallest process CPU times (all threads; steadier than wall time
on a shared machine) and the compile seconds.

The bare kernel is `lax.scan` over `jax.vmap(jax.grad(log_p))` on S points plus
the same optax Adam update as the family's: on a params pytree of the same
structure and shapes (`{"loc", "raw_scale"}` for mean-field, `{"loc",
"raw_scale_tril"}` for full-rank); it computes no loss value. "bare kernel
(dim)" updates one `[dim]` vector only (mean-field, S = 16). For mean-field at
S = 1 and 16, "bare kernel + loss" also computes and traces the loss value
(`vmap(value_and_grad(log p))`), and "bare kernel (chunked)" and "bare kernel
+ loss (chunked)" are those two as an outer scan over inner scans of at most
50 steps, as vi_jax's loop runs (XLA:CPU executes a small loop body faster
when its buffers are small: see `benchmarks.kernels.bare_kernel`). Peers run
at S = 1 and 16 only unless --peers-at-all-sizes.
Full-rank is skipped above 1000 dimensions (its dim^2 parameters dominate).
"""

import argparse
import statistics

import jax
import optax

from benchmarks import kernels
from benchmarks import peers
from benchmarks import report
from benchmarks import targets
from benchmarks import timing

FULL_RANK_MAX_DIM = 1000
KERNEL_CHUNK = 50  # steps per inner scan of "bare kernel (chunked)"


def _steps(target, sample_size, quick):
  if quick:
    return 50
  return max(20, target.steps // 8) if sample_size > 16 else target.steps


def _kernel_name(chunk, with_loss):
  """'bare kernel', '... + loss', '... (chunked)', '... + loss (chunked)'."""
  return ("bare kernel" + (" + loss" if with_loss else "") +
          (" (chunked)" if chunk else ""))


def measure_target(target, sample_sizes, repeats, quick=False,
                   peers_at_all_sizes=False, learning_rate=1e-2, fitted=None):
  """Rows (dicts) of the step-cost table for one target.

  When `fitted` is a dict, it receives `(sample_size, library, family) ->
  peers.Fitted`, the result of each method's first (warm-up) run, for
  `benchmarks.accuracy.evaluate` (equal budget: same steps and S).
  """
  optimizer = optax.adam(learning_rate)
  key = jax.random.key(0)
  families = [f for f in peers.FAMILIES
              if f == "mean-field" or target.dim <= FULL_RANK_MAX_DIM]
  rows = []
  for s in sample_sizes:
    steps = _steps(target, s, quick)
    libraries = (peers.LIBRARIES if s in (1, 16) or peers_at_all_sizes else
                 ("vi_jax",))
    fns = {}
    for family in families:
      fns[("bare kernel", family)] = kernels.bare_kernel(
          target.unconstrained_log_prob, target.dim, optimizer, s, steps,
          kernels.surrogate_params(family, target))
      if family == "mean-field" and s in (1, 16):
        for chunk, with_loss in ((None, True), (KERNEL_CHUNK, False),
                                 (KERNEL_CHUNK, True)):
          fns[(_kernel_name(chunk, with_loss), family)] = kernels.bare_kernel(
              target.unconstrained_log_prob, target.dim, optimizer, s, steps,
              kernels.surrogate_params(family, target), with_loss=with_loss,
              chunk=chunk)
      if family == "mean-field" and s == 16:
        fns[("bare kernel (dim)", family)] = kernels.bare_kernel(
            target.unconstrained_log_prob, target.dim, optimizer, s, steps)
      for library in libraries:
        fns[(library, family)] = peers.build(library, family, target,
                                             optimizer, s, steps)
    compiled, compile_s = {}, {}
    for name, fn in fns.items():
      compiled[name], compile_s[name] = timing.compile_fn(fn, key)
    outputs, cpu = {}, {}
    runs = timing.time_interleaved(compiled, (key,), repeats, outputs, cpu,
                                   budget_s=20.)
    if fitted is not None:
      for (method, family), out in outputs.items():
        if method in peers.LIBRARIES:
          fitted[(s, method, family)] = out
    for (method, family), t in runs.items():
      med = statistics.median(t)
      kernel = statistics.median(runs[("bare kernel", family)])
      rows.append(dict(target=target.name, sample_size=s, family=family,
                       method=method, steps=steps,
                       s_per_1000=med / steps * 1000, ratio=med / kernel,
                       noise=timing.noise(t),
                       cpu_ratio=min(cpu[(method, family)]) /
                       min(cpu[("bare kernel", family)]),
                       compile_s=compile_s[(method, family)]))
  return rows


HEADER = ("target", "S", "family", "method", "s / 1000 steps",
          "ratio to kernel", "noise", "ratio (min CPU s)", "compile s")


def as_table(rows) -> str:
  return report.markdown_table(HEADER, [
      (r["target"], r["sample_size"], r["family"], r["method"],
       r["s_per_1000"], r["ratio"], r["noise"], r["cpu_ratio"], r["compile_s"])
      for r in rows])


def summary(rows) -> str:
  """The acceptance view: mean-field, S = 16, loss traced, per target."""
  out = []
  for name in dict.fromkeys(r["target"] for r in rows):
    sel = {r["method"]: r for r in rows if r["target"] == name and
           r["sample_size"] == 16 and r["family"] == "mean-field"}
    if "vi_jax" not in sel:
      continue
    vi_row = sel["vi_jax"]
    peer_rows = [sel[m] for m in ("numpyro", "blackjax", "tfp") if m in sel]
    fastest_peer = min(peer_rows, key=lambda r: r["ratio"], default=None)
    fastest_compile = min(peer_rows, key=lambda r: r["compile_s"],
                          default=None)
    out.append((
        name, vi_row["ratio"],
        sel.get("bare kernel (dim)", {}).get("s_per_1000", float("nan")) and
        vi_row["s_per_1000"] / sel["bare kernel (dim)"]["s_per_1000"]
        if "bare kernel (dim)" in sel else float("nan"),
        vi_row["s_per_1000"] / sel["bare kernel + loss"]["s_per_1000"]
        if "bare kernel + loss" in sel else float("nan"),
        f"{fastest_peer['method']} {fastest_peer['ratio']:.3f}"
        if fastest_peer else "-",
        vi_row["compile_s"],
        f"{fastest_compile['method']} {fastest_compile['compile_s']:.2f}"
        if fastest_compile else "-",
    ))
  return report.markdown_table(
      ("target", "vi_jax / kernel", "vi_jax / kernel (dim)",
       "vi_jax / (kernel + loss)",
       "fastest peer / kernel", "vi_jax compile s", "fastest peer compile s"),
      out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--targets", default=None,
                      help="comma-separated keys of targets.TARGETS")
  parser.add_argument("--sample-sizes", default=None)
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--peers-at-all-sizes", action="store_true")
  args = parser.parse_args(argv)
  names = (args.targets.split(",") if args.targets else
           list(targets.QUICK_TARGETS if args.quick else targets.TARGETS))
  sizes = ([int(s) for s in args.sample_sizes.split(",")] if args.sample_sizes
           else ([16] if args.quick else [1, 16, 128]))
  repeats = args.repeats or (1 if args.quick else 5)
  print(report.machine_description(), flush=True)
  rows = []
  for name in names:
    target = targets.TARGETS[name]()
    new = measure_target(target, sizes, repeats, args.quick,
                         args.peers_at_all_sizes)
    print(as_table(new), flush=True)
    rows += new
  print(summary(rows), flush=True)
  return rows


if __name__ == "__main__":
  main()
