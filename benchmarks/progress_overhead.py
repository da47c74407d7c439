"""Overhead of the progress bar (default refresh) and of NaN safety.

    python -m benchmarks.progress_overhead [--quick] [--steps 2000]
        [--repeats 11]

For each target, times one compiled `vi.fit` returning its whole FitResult
(mean-field, sample_size 16, Adam, the loss traced every step) with the
progress bar off (the default path), with the bar at its default refresh
(written to /dev/null), and with NaN safety off, next to the bare kernel
(benchmarks.kernels.bare_kernel, which computes gradients but no loss value).
The compiled variants are called
under an outer `jax.jit` (so the bar is closed by an in-program callback); a
second table times top-level calls, what an interactive user runs (the bar is
closed on the host then). Timings interleave the variants and report medians
of seconds per 1000 steps; the overheads are ratios of those medians, and
(steadier on a shared machine) of the smallest wall times ("bar overhead (min)").
"""

import argparse
import os
import statistics
import time

import jax
import optax

import vi_jax as vi
from benchmarks import kernels
from benchmarks import targets


def _compile(fn, key):
  compiled = jax.jit(fn).lower(key).compile()
  jax.block_until_ready(compiled(key))
  return compiled


def _measure(target, optimizer, key, steps, repeats, args, bar):
  """(the table's row, the top-level calls' row) of one target; prints the row."""
  s = vi.surrogates.mean_field_normal(target.event_shape, target.bijector)

  def run(k, progress_bar=False, skip_nonfinite=True, target=target, s=s):
    return vi.fit(target.target_log_prob_fn, s, optimizer, steps, key=k,
                  sample_size=args.sample_size, progress_bar=progress_bar,
                  skip_nonfinite=skip_nonfinite)  # the whole FitResult

  variants = {
      "kernel": _compile(kernels.bare_kernel(
          target.unconstrained_log_prob, target.dim, optimizer,
          args.sample_size, steps), key),
      "off": _compile(run, key),
      "bar": _compile(lambda k: run(k, progress_bar=bar), key),
      "nonan": _compile(lambda k: run(k, skip_nonfinite=False), key),
  }
  times = {name: [] for name in variants}
  for _ in range(repeats):
    for name, fn in variants.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(key))
      times[name].append(time.perf_counter() - t0)
  med = {n: statistics.median(t) / steps * 1000 for n, t in times.items()}
  row = (target.name, med["kernel"], med["off"], med["bar"], med["nonan"],
         med["bar"] / med["off"] - 1, med["off"] / med["nonan"] - 1,
         med["off"] / med["kernel"],
         min(times["bar"]) / min(times["off"]) - 1)
  print("| {} | {:.4f} | {:.4f} | {:.4f} | {:.4f} | {:+.1%} | {:+.1%} | "
        "{:.3f} | {:+.1%} |".format(*row), flush=True)
  # What an interactive user runs: top-level calls (trace + compile + run).
  top = {"off": [], "bar": []}
  for _ in range(max(2, repeats // 4)):
    for name, pb in (("off", False), ("bar", bar)):
      t0 = time.perf_counter()
      jax.block_until_ready(run(key, progress_bar=pb).params)
      top[name].append(time.perf_counter() - t0)
  return row, (target.name, min(top["off"]), min(top["bar"]),
               min(top["bar"]) / min(top["off"]) - 1)


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--sample-size", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=None)
  args = parser.parse_args(argv)
  steps = 300 if args.quick else args.steps
  repeats = args.repeats or (3 if args.quick else 11)
  optimizer = optax.adam(1e-2)
  key = jax.random.key(0)
  devnull = open(os.devnull, "w")  # pylint: disable=consider-using-with
  bar = vi.progress.ProgressBar(file=devnull)
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, "
        f"steps={steps}, sample_size={args.sample_size}, repeats={repeats}")
  print("| target | bare kernel | fit: bar off (default) | fit: bar on "
        "(default refresh) | fit: NaN safety off | bar overhead | "
        "NaN-safety cost | default / kernel | bar overhead (min) |")
  print("|---|---|---|---|---|---|---|---|---|")
  rows, top_rows = [], []
  for target in (targets.eight_schools(),
                 targets.stochastic_volatility_small(),
                 targets.breast_cancer_logistic_regression()):
    row, top_row = _measure(target, optimizer, key, steps, repeats, args, bar)
    rows.append(row)
    top_rows.append(top_row)
  print("\nTop-level `vi.fit` calls (trace + compile + run, smallest of the "
        "repeats):\n")
  print("| target | bar off s | bar on s | bar overhead |")
  print("|---|---|---|---|")
  for r in top_rows:
    print("| {} | {:.3f} | {:.3f} | {:+.1%} |".format(*r), flush=True)
  return rows


if __name__ == "__main__":
  main()
