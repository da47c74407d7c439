"""Minibatch SVI that reaches the full-data posterior in 3 epochs + 1 pass.

    python -m benchmarks.minibatch_convergence [--epochs 3] [--batch-size 1024]
        [--sample-size 2] [--subsample 10000] [--lr 0.05] [--seed 0]

The 1,000,000 x 20 logistic regression of benchmarks/million_rows.py (the
data of benchmarks/multiprocess.py; N(0, 1) prior), against its full-data
Laplace approximation (Newton's method on all rows). Plain minibatch SVI
(Adam, batch 1024) stops with the scales 1.5x to 1.9x too wide after 20
epochs: the gradient of the scales is the draw times the minibatch noise
of the likelihood's gradient, about sqrt(N / B) = 31 times larger than its
signal. The recipe removes that noise at its sources:

1. Precondition: a Laplace approximation (`vi.laplace`, L-BFGS) on a random
   subsample of n = `--subsample` rows, the likelihood scaled by N / n: m0
   and C0 = L0 L0^T. Its mean is about sqrt(N / n) = 10
   posterior sds from the full-data mode; its covariance has the right shape.
2. Fit in whitened coordinates: `vi.whitening.whiten(mean_field_normal,
   (20,), loc=m0, scale_tril=L0)`, so q(w) = N(m0 + L0 loc, L0 diag(scale^2)
   L0^T) and the posterior is close to N(shift, I):
   one learning rate fits every coordinate.
3. Control variate: the target is the minibatch log density plus a
   first-order Taylor control variate around m0
   (`vi.minibatch.taylor_control_variate`, SVRG-style; one full pass over
   the data for the gradient at m0). The minibatch noise then scales with
   |w - m0| / sqrt(B) instead of sqrt(N / B).
4. Antithetic draws (`vi.minibatch.antithetic`): each draw is paired with its mirror image
   about q's mean, which cancels what is left of the likelihood noise in the
   scale's gradient and the Monte Carlo noise in the location's.
5. SGD with a constant learning rate for half the steps, then linearly to 0,
   and Polyak-Ruppert averaging of the params over the last epoch
   (`vi.minibatch.tail_averaged`).

Data passes: `--epochs` minibatch epochs + 1 (the control variate's anchor)
+ the subsample Laplace's gradient evaluations x n / N. Prints the largest |mean -
Laplace mean| / Laplace sd and the range of sd / Laplace sd (of w, from q's
full covariance), for the subsample Laplace start, the last params and the
averaged ones, and rows/s of the compiled fit (compile excluded; rows per
CPU-second too, for a shared machine). `--antithetic 0`, `--control-variate
0`, `--optimizer adam`, `--init-scale` switch the pieces for comparison.
"""

import argparse
import time

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.million_rows import blocks
from benchmarks.million_rows import D
import vi_jax as vi

OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam}


def log_prior(w):
  return distrax.Normal(0., 1.).log_prob(w).sum()


def log_likelihood(rows, w):
  logits = rows[0] @ w
  return jnp.sum(rows[1] * logits - jax.nn.softplus(logits))


@jax.jit
def newton_laplace(x, y):
  """The reference: mode and covariance of the full-data posterior (Newton)."""
  neg = lambda w: -(log_prior(w) + log_likelihood((x, y), w))

  def newton(w, _):
    return w - jnp.linalg.solve(jax.hessian(neg)(w), jax.grad(neg)(w)), None

  w, _ = jax.lax.scan(newton, jnp.zeros(x.shape[1]), None, length=10)
  return w, jnp.linalg.inv(jax.hessian(neg)(w))


def compare(mean, cov, ref_mean, ref_cov):
  sd, ref_sd = np.sqrt(np.diag(cov)), np.sqrt(np.diag(ref_cov))
  return dict(max_mean_err_sd=float(np.max(np.abs(mean - ref_mean) / ref_sd)),
              sd_ratio_min=float(np.min(sd / ref_sd)),
              sd_ratio_max=float(np.max(sd / ref_sd)))


def recipe(args, data, n):
  """The documented recipe (vi_jax.stochastic.minibatch's docstring): (fit, lap, steps)."""
  sub = np.random.default_rng(args.seed).choice(n, args.subsample,
                                                 replace=False)
  rows = jax.tree_util.tree_map(lambda x: x[sub], data)
  lap = vi.laplace(lambda w: log_prior(w) + n / args.subsample *
                   log_likelihood(rows, w), (D,))
  q = vi.whitening.whiten(vi.surrogates.mean_field_normal, (D,),
                          loc=lap.loc, scale_tril=lap.scale_tril,
                          init_scale=args.init_scale)
  if args.antithetic:
    q = vi.minibatch.antithetic(
        q, lambda params: lap.loc + lap.scale_tril @ params["loc"])
  if args.control_variate:
    target = vi.minibatch.taylor_control_variate(log_prior, log_likelihood,
                                                 data, lap.loc)
  else:
    target = vi.minibatch.scaled_log_prob(log_prior, log_likelihood)
  steps_per_epoch = n // args.batch_size
  steps = args.epochs * steps_per_epoch
  schedule = optax.join_schedules(
      [optax.constant_schedule(args.lr),
       optax.linear_schedule(args.lr, 0., steps - steps // 2)], [steps // 2])
  optimizer = vi.minibatch.tail_averaged(
      OPTIMIZERS[args.optimizer](schedule),
      start=steps - args.average_epochs * steps_per_epoch)
  fit = jax.jit(lambda data, key: vi.fit(
      target, q, optimizer, steps, key=key, sample_size=args.sample_size,
      data=data, batch_size=args.batch_size, progress_bar=False))
  return fit, lap, steps


def run(args):
  x, y = blocks(0, 1)
  n = len(x)
  data = (jnp.asarray(x), jnp.asarray(y))
  ref_mean, ref_cov = map(np.asarray, newton_laplace(*data))
  t0, cpu0 = time.perf_counter(), time.process_time()
  fit, lap, steps = recipe(args, data, n)  # subsample Laplace + full pass
  prep_s, prep_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
  key = jax.random.key(args.seed)
  t0 = time.perf_counter()
  compiled = fit.lower(data, key).compile()
  compile_s = time.perf_counter() - t0
  t0, cpu0 = time.perf_counter(), time.process_time()
  result = jax.block_until_ready(compiled(data, key))
  run_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
  m0, l0 = np.asarray(lap.loc), np.asarray(lap.scale_tril)
  out = dict(steps=steps, compile_s=compile_s, run_s=run_s, cpu_s=cpu_s,
             prep_s=prep_s, prep_cpu_s=prep_cpu_s,
             laplace_grad_evals=int(lap.num_grad_evals),
             laplace_converged=bool(lap.converged),
             rows_per_s=args.batch_size * steps / run_s,
             start=compare(m0, l0 @ l0.T, ref_mean, ref_cov))
  averaged = vi.minibatch.averaged_params(result.state.opt_state)
  for name, params in (("last", result.params), ("averaged", averaged)):
    scale = np.asarray(jax.nn.softplus(params["raw_scale"]))
    mean = m0 + l0 @ np.asarray(params["loc"])
    out[name] = compare(mean, (l0 * scale ** 2) @ l0.T, ref_mean, ref_cov)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--batch-size", type=int, default=1024)
  p.add_argument("--sample-size", type=int, default=2)
  p.add_argument("--subsample", type=int, default=10_000)
  p.add_argument("--lr", type=float, default=0.05)
  p.add_argument("--average-epochs", type=int, default=1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--antithetic", type=int, default=1)
  p.add_argument("--init-scale", type=float, default=1.)
  p.add_argument("--control-variate", type=int, default=1)
  p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="sgd")
  args = p.parse_args(argv)
  out = run(args)
  print(f"1,000,000 x {D} logistic regression, {args.epochs} epochs of batch "
        f"{args.batch_size} ({out['steps']} steps), S = {args.sample_size}, "
        f"Laplace start from {args.subsample} rows, {args.optimizer} lr "
        f"{args.lr} (linear decay to 0 over the second half), control variate "
        f"{bool(args.control_variate)}, antithetic {bool(args.antithetic)}, "
        f"averaged over the last {args.average_epochs} epoch(s):")
  print("| params | max |mean - Laplace| / sd | sd / Laplace sd |")
  print("|---|---|---|")
  for name in ("start", "last", "averaged"):
    r = out[name]
    print(f"| {name} | {r['max_mean_err_sd']:.3f} | "
          f"{r['sd_ratio_min']:.3f} to {r['sd_ratio_max']:.3f} |")
  passes = (args.epochs + args.control_variate +
            out["laplace_grad_evals"] * args.subsample / 1e6)
  rows = out["steps"] * args.batch_size
  print(f"data passes {passes:.2f}; rows/s {out['rows_per_s']:,.0f}, rows per "
        f"CPU-second {rows / out['cpu_s']:,.0f} (fit {out['run_s']:.1f} s "
        f"wall, {out['cpu_s']:.1f} s CPU; compile {out['compile_s']:.1f} s; "
        f"subsample Laplace ({out['laplace_grad_evals']} gradient evaluations, "
        f"converged {out['laplace_converged']}) + control-variate pass "
        f"{out['prep_s']:.1f} s wall, {out['prep_cpu_s']:.1f} s CPU)")
  return out


if __name__ == "__main__":
  main()
