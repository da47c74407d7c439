"""Variational objectives: pure Monte Carlo losses over surrogate draws.

Every loss has the `vi_jax._types.LossFn` signature
`(target_log_prob_fn, surrogate, params, key, sample_size) -> scalar` and is
what `vi.fit(loss=...)` minimizes. Factories close over hyperparameters.
"""

import jax
import jax.numpy as jnp

from vi_jax._types import LossFn
from vi_jax.target import batched_log_prob, call_target

__all__ = ["negative_elbo", "target_log_prob_batched"]


def target_log_prob_batched(target_log_prob_fn):
  """`z (leading [n]) -> log p: [n]`, the target vmapped with fused gradients.

  See `vi_jax.target.batched_log_prob`: differentiating it costs one
  `vmap(value_and_grad(target))`, the bare kernel.
  """
  batched = batched_log_prob(
      lambda z, extra: call_target(target_log_prob_fn, z))
  return lambda z: batched(z, ())


def negative_elbo(*, stick_the_landing: bool = False) -> LossFn:
  """The negative evidence lower bound, -ELBO = KL[q || p] - log Z.

  loss = -(1/S) sum_s [log p(z_s) - log q(z_s)], z_s ~ q by reparameterization
  (S = sample_size), the target vmapped over draws.

  Args:
    stick_the_landing: if True, `log q` is evaluated with stop-gradient params
      (Roeder, Wu, Duvenaud 2017, "Sticking the Landing"): same expectation,
      zero-variance gradient when q equals the posterior.

  Returns:
    A `LossFn` returning a scalar of the params' dtype.

  References:
    Kucukelbir et al. 2017 (ADVI); tfp.vi.monte_carlo_variational_loss with
    kl_reverse; numpyro.infer.Trace_ELBO.
  """

  def loss(target_log_prob_fn, surrogate, params, key, sample_size):
    z, log_q = surrogate.sample_and_log_prob(params, key, sample_size)
    if stick_the_landing:
      log_q = surrogate.log_prob(jax.lax.stop_gradient(params), z)
    log_p = target_log_prob_batched(target_log_prob_fn)(z)
    return -jnp.mean(log_p - log_q)

  return loss
