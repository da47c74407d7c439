"""ELBOs of vi_jax's surrogate families on inference_gym's Banana and Neal's funnel.

    python -m benchmarks.surrogate_families [--quick] [--steps N]

Each family is fitted by `vi.fit` (negative ELBO, Adam with a cosine-decayed
learning rate, `sample_size` draws per step) and its ELBO estimated on the
same number of fresh draws (10,000 by default, one fixed key for every family).
Both targets are normalized densities (log Z = 0), so -ELBO = KL[q || p] >= 0.
Also prints the 2-component mixture fitted with an IWAE loss to the seed's
mixture target 0.3 N(-3, 1) + 0.7 N(2, 1.5) (weights and modes recovered).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import optax
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

tfd = tfp.distributions


def _targets(funnel_dims):
  from inference_gym import using_jax as gym  # pylint: disable=g-import-not-at-top
  out = [("Banana (2-D)", gym.targets.Banana())]
  for d in funnel_dims:
    out.append((f"Neal's funnel ({d}-D)", gym.targets.NealsFunnel(ndims=d)))
  return out


def _families(dim):
  s = vi.surrogates
  return [
      ("mean_field_normal", s.mean_field_normal((dim,), init_scale=1.)),
      ("full_rank_normal", s.full_rank_normal((dim,), init_scale=1.)),
      ("low_rank_normal(rank=1)", s.low_rank_normal((dim,), 1, init_scale=1.)),
      ("mixture(5, full_rank)", s.mixture((dim,), 5, components="full_rank")),
      ("real_nvp", s.real_nvp((dim,))),
      ("neural_spline_flow", s.neural_spline_flow((dim,))),
      ("inverse_autoregressive_flow", s.inverse_autoregressive_flow((dim,))),
  ]


def elbo_estimate(target_log_prob_fn, surrogate, params, key, n):
  """ELBO and its Monte Carlo standard error from `n` fresh draws."""
  z, log_q = surrogate.sample_and_log_prob(params, key, n)
  w = jax.vmap(target_log_prob_fn)(z) - log_q
  return float(jnp.mean(w)), float(jnp.std(w) / jnp.sqrt(n))


def _iwae_loss(k):
  """-IWAE bound with K = k (Burda et al. 2016), reparameterized draws."""

  def loss(target_log_prob_fn, surrogate, params, key, sample_size):
    z, log_q = surrogate.sample_and_log_prob(params, key, sample_size * k)
    log_w = (vi.target.batched_target(target_log_prob_fn)(z) - log_q)
    log_w = log_w.reshape(sample_size, k)
    return -jnp.mean(jax.nn.logsumexp(log_w, -1) - jnp.log(k))

  return loss


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--steps", type=int, default=5000)
  parser.add_argument("--sample-size", type=int, default=16)
  parser.add_argument("--eval-draws", type=int, default=10_000)
  args = parser.parse_args(argv)
  steps = 500 if args.quick else args.steps
  funnel_dims = (2,) if args.quick else (2, 10)
  print(f"# {steps} Adam steps (lr 1e-2, cosine decay), sample_size "
        f"{args.sample_size}; ELBO +- MC std. error on {args.eval_draws} "
        "fresh draws; log Z = 0 so -ELBO = KL[q||p]. "
        f"device: {jax.devices()[0].platform}")
  eval_key = jax.random.key(123)
  for name, t in _targets(funnel_dims):
    dim = int(t.event_shape[0])
    fn = t.unnormalized_log_prob
    print(f"\n## {name}")
    print(f"{'family':32s} {'ELBO':>18s} {'fit s':>7s}")
    for fam_name, surrogate in _families(dim):
      opt = optax.adam(optax.cosine_decay_schedule(1e-2, steps, 0.01))
      t0 = time.perf_counter()
      result = vi.fit(fn, surrogate, opt, steps, key=jax.random.key(0),
                      sample_size=args.sample_size)
      jax.block_until_ready(result.params)
      secs = time.perf_counter() - t0
      m, se = elbo_estimate(fn, surrogate, result.params, eval_key,
                            args.eval_draws)
      print(f"{fam_name:32s} {m:9.4f} +- {se:6.4f} {secs:7.1f}")

  print("\n## seed mixture 0.3 N(-3, 1) + 0.7 N(2, 1.5): mixture((), 2) "
        "fitted with -IWAE (K=4), 2000 steps, sample_size 16, 3 seeds")
  target = tfd.MixtureSameFamily(tfd.Categorical(probs=[0.3, 0.7]),
                                 tfd.Normal([-3., 2.], [1., 1.5]))
  surrogate = vi.surrogates.mixture((), 2)
  steps = 500 if args.quick else 2000
  for seed in range(3):
    result = vi.fit(target.log_prob, surrogate,
                    optax.adam(optax.cosine_decay_schedule(5e-2, steps, 0.02)),
                    steps, key=jax.random.key(seed), sample_size=16,
                    loss=_iwae_loss(4))
    p = result.params
    order = jnp.argsort(p["loc"][:, 0])
    fmt = lambda x: "[" + ", ".join(f"{float(v):.3f}" for v in x) + "]"
    m, se = elbo_estimate(target.log_prob, surrogate, p, eval_key,
                          args.eval_draws)
    print(f"seed {seed}: weights {fmt(jax.nn.softmax(p['logits'])[order])} "
          f"locs {fmt(p['loc'][order, 0])} "
          f"scales {fmt(jax.nn.softplus(p['raw_scale'])[order, 0])} "
          f"ELBO {m:.4f} +- {se:.4f}")


if __name__ == "__main__":
  main()
