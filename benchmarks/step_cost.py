"""vi.fit step cost against the bare kernel, in one process.

    python -m benchmarks.step_cost [--quick]

Mean-field Gaussian, sample_size 16, 2000 Adam steps, the loss traced every
step; the bare kernel is lax.scan of jax.vmap(jax.grad(log_p)) on 16 points plus
the same optax update. Prints median seconds per 1000 steps, the ratio to the
kernel and compile seconds.
"""

import argparse

import jax
import optax

import vi_jax as vi
from benchmarks import common


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--sample-size", type=int, default=16)
  args = parser.parse_args(argv)
  steps = 200 if args.quick else args.steps
  repeats = 2 if args.quick else 7
  s_size = args.sample_size
  optimizer = optax.adam(1e-2)
  key = jax.random.key(0)
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, "
        f"steps={steps}, sample_size={s_size}, repeats={repeats}")
  print("| target | method | s / 1000 steps | ratio to kernel | compile s |")
  print("|---|---|---|---|---|")
  rows = []
  for target in (common.stochastic_volatility_small(),
                 common.breast_cancer_logistic_regression()):
    kernel = common.bare_kernel(target.unconstrained_log_prob, target.dim,
                                optimizer, s_size, steps)
    surrogate = vi.surrogates.mean_field_normal(target.event_shape,
                                                target.bijector)

    def run_vi(k, target=target, surrogate=surrogate):
      return vi.fit(target.target_log_prob_fn, surrogate, optimizer, steps,
                    key=k, sample_size=s_size)

    kc, kt = common.time_compiled(kernel, key, repeats=repeats)
    vc, vt = common.time_compiled(run_vi, key, repeats=repeats)
    for name, c, t in (("bare kernel", kc, kt), ("vi_jax mean-field", vc, vt)):
      per_1000 = t / steps * 1000
      print(f"| {target.name} | {name} | {per_1000:.4f} | {t / kt:.3f} | "
            f"{c:.2f} |", flush=True)
      rows.append((target.name, name, per_1000, t / kt, c))
  return rows


if __name__ == "__main__":
  main()
