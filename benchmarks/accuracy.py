"""Accuracy at equal budget: every method's fit against the reference posterior.

    python -m benchmarks.accuracy [--quick] [--targets banana,funnel]

Every method (vi_jax, NumPyro, Blackjax, TFP; mean-field and full-rank) runs
the same number of steps with the same sample size S, i.e. the same number of
target-gradient evaluations (steps x S), from the same initialization (see
`benchmarks.peers`). Each fitted Gaussian is then evaluated on the SAME fresh
standard-normal draws (common random numbers), pushed through the target's
bijectors:

* `max |mean err| / sd` and `mean |mean err| / sd`: over latent coordinates,
  |E_q[z_i] - E_ref[z_i]| / sd_ref[z_i];
* `median sd ratio`: median over coordinates of sd_q[z_i] / sd_ref[z_i]
  (mean-field VI typically underestimates, < 1);
* `ELBO`: mean of log p(u) + log|J| - log q(u) over the draws (higher is better;
  the same estimator for every method).

The reference is inference_gym's ground truth (long NUTS runs, or analytic);
targets without one (the logistic regressions) get the ELBO only.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import peers
from benchmarks import report
from benchmarks import targets

NUM_DRAWS = 4096


def evaluate(target: targets.Target, fitted: peers.Fitted, key,
             num_draws: int = NUM_DRAWS) -> dict:
  """Accuracy metrics (see the module docstring) of one fitted Gaussian."""
  u, log_q = peers.gaussian_draws(fitted, key, num_draws)
  log_p = jax.vmap(target.unconstrained_log_prob)(u)
  out = dict(elbo=float(jnp.mean(log_p - log_q)),
             final_loss=float(jnp.mean(fitted.losses[-100:])))
  if target.ref_mean is not None:
    z = np.asarray(target.forward(u), np.float64)
    err = np.abs(z.mean(0) - target.ref_mean) / target.ref_std
    out.update(max_mean_err=float(err.max()), mean_mean_err=float(err.mean()),
               median_sd_ratio=float(np.median(z.std(0) / target.ref_std)))
  else:
    out.update(max_mean_err=float("nan"), mean_mean_err=float("nan"),
               median_sd_ratio=float("nan"))
  return out


def measure_target(target, sample_size=16, num_steps=None, quick=False,
                   learning_rate=1e-2):
  """Rows (dicts) of the accuracy table for one target."""
  steps = 100 if quick else (num_steps or target.steps)
  optimizer = optax.adam(learning_rate)
  rows = []
  for family in peers.FAMILIES:
    if family == "full-rank" and target.dim > 1000:
      continue
    for library in peers.LIBRARIES:
      run = peers.build(library, family, target, optimizer, sample_size, steps)
      fitted = jax.jit(run)(jax.random.key(0))
      rows.append(row(target, library, family, sample_size, steps, fitted))
  return rows


def row(target, library, family, sample_size, steps, fitted) -> dict:
  metrics = evaluate(target, fitted, jax.random.key(1))
  return dict(target=target.name, method=library, family=family,
              sample_size=sample_size, steps=steps,
              grad_evals=sample_size * steps, **metrics)


HEADER = ("target", "family", "method", "grad evals", "max |mean err|/sd",
          "mean |mean err|/sd", "median sd ratio", "ELBO")


def as_table(rows) -> str:
  return report.markdown_table(HEADER, [
      (r["target"], r["family"], r["method"], r["grad_evals"],
       r["max_mean_err"], r["mean_mean_err"], r["median_sd_ratio"], r["elbo"])
      for r in rows])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--targets", default=None)
  args = parser.parse_args(argv)
  names = (args.targets.split(",") if args.targets else
           list(targets.QUICK_TARGETS if args.quick else targets.TARGETS))
  rows = []
  for name in names:
    new = measure_target(targets.TARGETS[name](), quick=args.quick)
    print(as_table(new), flush=True)
    rows += new
  return rows


if __name__ == "__main__":
  main()
