"""Minibatch SVI that reaches the full-data posterior in 3 epochs + 1 pass.

    python -m benchmarks.minibatch_convergence [--epochs 3] [--batch-size 1024]
        [--sample-size 2] [--subsample 10000] [--lr 0.05] [--seed 0]

The 1,000,000 x 20 logistic regression of benchmarks/multiprocess.py (N(0, 1)
prior), against its full-data Laplace approximation (Newton's method on all
rows). Plain minibatch SVI (Adam, batch 1024) stops with the scales 1.5x to
1.9x too wide after 20 epochs: the gradient of the scales is the draw times
the minibatch noise of the likelihood's gradient, about sqrt(N / B) = 31
times larger than its signal. The recipe removes that noise at its sources:

1. Precondition: a Laplace approximation on a random subsample of n =
   `--subsample` rows, the likelihood scaled by N / n (Newton's method; ~10 x n
   rows of work): m0 and C0 = L0 L0^T. Its mean is about sqrt(N / n) = 10
   posterior sds from the full-data mode; its covariance has the right shape.
2. Fit in whitened coordinates: `mean_field_normal((20,), bijector=
   tfb.Chain([tfb.Shift(m0), tfb.ScaleMatvecTriL(L0)]))`, so q(w) = N(m0 + L0
   loc, L0 diag(scale^2) L0^T) and the posterior is close to N(shift, I):
   one learning rate fits every coordinate.
3. Control variate: the target is the minibatch log density plus a
   first-order Taylor control variate around m0 (`control_variate_target`,
   SVRG-style; one full pass over the data for the gradient at m0). The
   minibatch noise then scales with |w - m0| / sqrt(B) instead of sqrt(N / B).
4. Antithetic draws (`antithetic`): each draw is paired with its mirror image
   about q's mean, which cancels what is left of the likelihood noise in the
   scale's gradient and the Monte Carlo noise in the location's.
5. SGD with a constant learning rate for half the steps, then linearly to 0,
   and Polyak-Ruppert averaging of the params over the last epoch (from the
   traced params).

Data passes: `--epochs` minibatch epochs + 1 (the control variate's anchor)
+ 10 x n / N (the subsample's Newton steps). Prints the largest |mean -
Laplace mean| / Laplace sd and the range of sd / Laplace sd (of w, from q's
full covariance), for the subsample Laplace start, the last params and the
averaged ones, and rows/s of the compiled fit (compile excluded; rows per
CPU-second too, for a shared machine). `--antithetic 0`, `--control-variate
0`, `--optimizer adam`, `--init-scale` switch the pieces for comparison.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorflow_probability.substrates.jax as tfp

from benchmarks.multiprocess import _blocks
from benchmarks.multiprocess import D
import distrax
import vi_jax as vi

tfb = tfp.bijectors


OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam}


def log_prior(w):
  return distrax.Normal(0., 1.).log_prob(w).sum()


def log_likelihood(rows, w):
  logits = rows[0] @ w
  return jnp.sum(rows[1] * logits - jax.nn.softplus(logits))


@jax.jit
def laplace(x, y, scale):
  """Mode and covariance of log prior + scale * log lik (Newton, 10 steps)."""
  neg = lambda w: -(log_prior(w) + scale * log_likelihood((x, y), w))

  def newton(w, _):
    return w - jnp.linalg.solve(jax.hessian(neg)(w), jax.grad(neg)(w)), None

  w, _ = jax.lax.scan(newton, jnp.zeros(x.shape[1]), None, length=10)
  return w, jnp.linalg.inv(jax.hessian(neg)(w))


def control_variate_target(x, y, anchor):
  """The minibatch target with a first-order Taylor control variate.

  log p(w) + ll(all rows; anchor) + g_all . (w - anchor)
           + N / B [ll(rows; w) - ll(rows; anchor) - g_rows . (w - anchor)],
  g = the gradient of the log likelihood at `anchor`: an unbiased estimate of
  the full-data log density whose minibatch noise shrinks with |w - anchor|
  (SVRG, Johnson & Zhang 2013; Baker, Fearnhead, Fox & Nemeth 2019's control
  variates for stochastic gradients). Costs one full pass for (ll, g) at the
  anchor, then one more gradient of the batch's likelihood per step (shared by
  the draws: it does not depend on w).
  """
  ll_all, g_all = jax.jit(jax.value_and_grad(
      lambda w: log_likelihood((x, y), w)))(anchor)

  def target(batch, w):
    ll_a, g_a = jax.value_and_grad(
        lambda v: log_likelihood(batch.data, v))(anchor)
    d = w - anchor
    return (log_prior(w) + ll_all + g_all @ d + batch.scale * (
        log_likelihood(batch.data, w) - ll_a - g_a @ d))

  return target


def antithetic(surrogate, mean_fn):
  """Draws in mirrored pairs z, 2 E_q[z] - z (for a q symmetric about its mean).

  An odd `sample_size` leaves the last pair unmirrored. log q is the same for
  both draws of a pair (and so is its gradient), so each pair reuses it. The minibatch noise of the
  likelihood's gradient is the same for both draws of a step and cancels in
  the scale's gradient, sigma eps^T (g(mu + sigma eps) - g(mu - sigma eps)) / 2,
  as the Monte Carlo noise of the location's gradient does.
  """

  def sample_and_log_prob(params, key, sample_size):
    z, log_q = surrogate.sample_and_log_prob(params, key, (sample_size + 1) // 2)
    mirrored = 2 * mean_fn(params) - z
    return (jnp.concatenate([z, mirrored])[:sample_size],
            jnp.concatenate([log_q, log_q])[:sample_size])

  return surrogate._replace(sample_and_log_prob=sample_and_log_prob)


def compare(mean, cov, ref_mean, ref_cov):
  sd, ref_sd = np.sqrt(np.diag(cov)), np.sqrt(np.diag(ref_cov))
  return dict(max_mean_err_sd=float(np.max(np.abs(mean - ref_mean) / ref_sd)),
              sd_ratio_min=float(np.min(sd / ref_sd)),
              sd_ratio_max=float(np.max(sd / ref_sd)))


def run(args):
  x, y = _blocks(0, 1)
  n = len(x)
  ref_mean, ref_cov = map(np.asarray, laplace(x, y, 1.))
  rng = np.random.default_rng(args.seed)
  sub = rng.choice(n, args.subsample, replace=False)
  m0, c0 = laplace(x[sub], y[sub], n / args.subsample)
  l0 = jnp.linalg.cholesky(c0)
  q = vi.surrogates.mean_field_normal(
      (D,), bijector=tfb.Chain([tfb.Shift(m0), tfb.ScaleMatvecTriL(l0)]),
      init_scale=args.init_scale)
  if args.antithetic:
    q = antithetic(q, lambda params: m0 + l0 @ params["loc"])
  steps_per_epoch = n // args.batch_size
  steps = args.epochs * steps_per_epoch
  schedule = optax.join_schedules(
      [optax.constant_schedule(args.lr),
       optax.linear_schedule(args.lr, 0., steps - steps // 2)], [steps // 2])
  data = (jnp.asarray(x), jnp.asarray(y))
  if args.control_variate:
    target = control_variate_target(*data, m0)
  else:
    target = vi.minibatch.scaled_log_prob(log_prior, log_likelihood)
  fit = jax.jit(lambda data, key: vi.fit(
      target, q, OPTIMIZERS[args.optimizer](schedule), steps, key=key,
      sample_size=args.sample_size, data=data, batch_size=args.batch_size,
      trace_fn=lambda tq: (tq.loss, tq.params), progress_bar=False))
  key = jax.random.key(args.seed)
  t0 = time.perf_counter()
  compiled = fit.lower(data, key).compile()
  compile_s = time.perf_counter() - t0
  t0, cpu0 = time.perf_counter(), time.process_time()
  result = jax.block_until_ready(compiled(data, key))
  run_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
  tail = args.average_epochs * steps_per_epoch
  averaged = jax.tree_util.tree_map(lambda p: p[-tail:].mean(0),
                                    result.trace[1])
  out = dict(steps=steps, compile_s=compile_s, run_s=run_s, cpu_s=cpu_s,
             rows_per_s=args.batch_size * steps / run_s,
             start=compare(m0, c0, ref_mean, ref_cov))
  for name, params in (("last", result.params), ("averaged", averaged)):
    scale = jax.nn.softplus(params["raw_scale"])
    mean = m0 + l0 @ params["loc"]
    cov = (l0 * scale ** 2) @ l0.T
    out[name] = compare(np.asarray(mean), np.asarray(cov), ref_mean, ref_cov)
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
  passes = args.epochs + args.control_variate + 10 * args.subsample / 1e6
  rows = out["steps"] * args.batch_size
  print(f"data passes {passes:.2f}; rows/s {out['rows_per_s']:,.0f}, rows per "
        f"CPU-second {rows / out['cpu_s']:,.0f} (fit {out['run_s']:.1f} s "
        f"wall, {out['cpu_s']:.1f} s CPU; compile {out['compile_s']:.1f} s)")
  return out


if __name__ == "__main__":
  main()
