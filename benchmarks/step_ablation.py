"""Where vi_jax's per-step cost goes on a small target: one piece off at a time.

    taskset -c 0 python -m benchmarks.step_ablation --target eight_schools \
        --sample-size 1 --variants full,no-guard,one-chunk

A diagnostic for the small-problem cost (issue 13), not part of `run_all`.
Every variant is `vi.fit` (mean-field, Adam 1e-2, loss traced) with one
engine piece replaced by a no-op, compiled in this process and timed with the
bare kernel and the bare kernel with the loss value (each also in vi_jax's
chunks: `benchmarks.kernels.bare_kernel(..., chunk=50)`) and Blackjax,
interleaved (`benchmarks.timing.time_interleaved`). Pin the process to one core
(`taskset -c 0`) to see the compute without XLA:CPU's thread-pool overhead.

Variants (comma-separated):
  full                 vi_jax as it is
  no-guard             `vi.fit(..., skip_nonfinite=False,
                       max_consecutive_nonfinite=None)`: no non-finite checks
                       or selects
  guard-check-only     the guard checks finiteness and counts, but never
                       rejects (`vi_jax.stochastic.guards._select` keeps the proposal):
                       what its conditional costs
  guard-select-only    the guard's conditional without the finiteness check
                       (`vi_jax.stochastic.guards.all_finite` always True)
  one-chunk            the scan not split into short chunks
                       (`vi_jax.stochastic.loop._SEQUENTIAL_BYTES` unbounded): XLA:CPU
                       runs the loop body with its task-graph executor
  no-base-materialize  the surrogate's base draws not materialized
                       (`vi_jax.surrogates.base.materialize` a no-op)
  no-target-materialize  the draws not materialized before the target
  no-bits-once         the unrolled Threefry's bits not materialized
  vmap-one-draw        the target vmapped over a batch of one (no one-draw
                       path in `vi_jax.model.target`)

Prints microseconds per step and the wall and CPU-time ratios to the kernel.
"""

import argparse
import contextlib

import jax
import optax

from benchmarks import kernels
from benchmarks import peers
from benchmarks import step_cost
from benchmarks import targets
from benchmarks import timing

VARIANTS = ("full", "no-guard", "guard-check-only", "guard-select-only",
            "one-chunk", "no-base-materialize",
            "no-target-materialize", "no-bits-once", "vmap-one-draw")


@contextlib.contextmanager
def _replaced(module, name, value):
  old = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, old)


def _patch(variant):
  """A context manager that turns one engine piece off while tracing."""
  from vi_jax._src import rng  # pylint: disable=g-import-not-at-top
  from vi_jax.model import target  # pylint: disable=g-import-not-at-top
  from vi_jax.stochastic import guards, loop  # pylint: disable=g-import-not-at-top
  from vi_jax.stochastic import svi as fit  # pylint: disable=g-import-not-at-top
  from vi_jax.surrogates import base  # pylint: disable=g-import-not-at-top
  identity = lambda x: x
  if variant == "no-guard":
    guard = fit.with_nonfinite_guard
    return _replaced(fit, "with_nonfinite_guard",
                     lambda inner, *, gated, **_: guard(
                         inner, skip_nonfinite=False,
                         max_consecutive_nonfinite=None, gated=gated))
  if variant == "guard-check-only":
    return _replaced(guards, "_select", lambda pred, new, old: new)
  if variant == "guard-select-only":
    return _replaced(guards, "all_finite", lambda *trees: jax.numpy.ones(
        (), bool))
  if variant == "one-chunk":
    return _replaced(loop, "_SEQUENTIAL_BYTES", 2**62)
  if variant == "no-base-materialize":
    return _replaced(base, "materialize", identity)
  if variant == "no-target-materialize":
    return _replaced(target, "materialize", identity)
  if variant == "no-bits-once":
    return _replaced(rng, "_computed_once", identity)
  if variant == "vmap-one-draw":
    return _replaced(target, "_map",
                     lambda fn, axes, *a: jax.vmap(fn, in_axes=axes)(*a))
  return contextlib.nullcontext()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--target", default="eight_schools",
                      choices=tuple(targets.TARGETS))
  parser.add_argument("--sample-size", type=int, default=1)
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args(argv)
  target = targets.TARGETS[args.target]()
  optimizer, key, s = optax.adam(1e-2), jax.random.key(0), args.sample_size
  params = kernels.surrogate_params("mean-field", target)
  fns = {
      "kernel": kernels.bare_kernel(target.unconstrained_log_prob, target.dim,
                                    optimizer, s, target.steps, params),
      "kernel (chunked)": kernels.bare_kernel(
          target.unconstrained_log_prob, target.dim, optimizer, s,
          target.steps, params, chunk=step_cost.KERNEL_CHUNK),
      "kernel + loss": kernels.bare_kernel(
          target.unconstrained_log_prob, target.dim, optimizer, s,
          target.steps, params, with_loss=True),
      "kernel + loss (chunked)": kernels.bare_kernel(
          target.unconstrained_log_prob, target.dim, optimizer, s,
          target.steps, params, with_loss=True, chunk=step_cost.KERNEL_CHUNK),
      "blackjax": peers.build("blackjax", "mean-field", target, optimizer, s,
                              target.steps),
  }
  compiled = {name: timing.compile_fn(fn, key)[0] for name, fn in fns.items()}
  for variant in args.variants.split(","):
    if variant not in VARIANTS:
      raise ValueError(f"--variants: {variant!r} is not one of {VARIANTS}")
    with _patch(variant):
      fn = peers.build("vi_jax", "mean-field", target, optimizer, s,
                       target.steps)
      compiled[f"vi_jax {variant}"] = timing.compile_fn(fn, key)[0]
  cpu = {}
  runs = timing.time_interleaved(compiled, (key,), args.repeats, {}, cpu,
                                 budget_s=30.)
  wall0, cpu0 = min(runs["kernel"]), min(cpu["kernel"])
  chunked0 = min(runs["kernel (chunked)"])
  print(f"{target.name}, S = {s}, {target.steps} steps, min of "
        f"{args.repeats}; wall and CPU time over the kernel's, wall over "
        "the chunked kernel's:")
  for name in compiled:
    print(f"  {name:<30} {1e6 * min(runs[name]) / target.steps:8.3f} us/step"
          f"  wall {min(runs[name]) / wall0:.3f}  CPU {min(cpu[name]) / cpu0:.3f}"
          f"  chunked {min(runs[name]) / chunked0:.3f}")


if __name__ == "__main__":
  main()
