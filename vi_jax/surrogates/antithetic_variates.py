"""Antithetic draws: a surrogate whose draws come in mirrored pairs.

`antithetic(surrogate, mean_fn)` draws `z` and `2 E_q[z] - z`. Step 4 of the
convergence recipe in `vi_jax.stochastic.minibatch`: the mirrored pairs
cancel the remaining minibatch noise of the likelihood in the scales'
gradient and the Monte Carlo noise in the means' (Hammersley & Morton 1956;
Ren, Zhao & Ermon 2019).
"""

from typing import Callable

import jax
import jax.numpy as jnp

from vi_jax._src.types import PyTree
from vi_jax._src import validation as vv

__all__ = ["antithetic"]


def antithetic(surrogate, mean_fn: Callable[[PyTree], PyTree]):
  """`surrogate` with its draws in mirrored pairs `z`, `2 E_q[z] - z`.

  For a q symmetric about its mean in the latents' space (a Gaussian, or a
  whitened one; not through a nonlinear bijector), each mirrored draw has
  the same `log_q` as its partner, which is reused. The minibatch noise of
  the likelihood's gradient is the same for both draws of a step and
  cancels in the scales' gradient, sigma eps (g(mu + sigma eps) - g(mu -
  sigma eps)) / 2, as the Monte Carlo noise of the means' gradient does (for
  a Gaussian target, exactly). An odd `sample_size` leaves the last draw
  unpaired. `log_prob` is unchanged.

  Args:
    surrogate: a `Surrogate` symmetric about its mean.
    mean_fn: `params -> E_q[z]`, a pytree like one draw (no sample axis).

  Returns:
    A `Surrogate` (its `distribution_fn` is None).

  Raises:
    TypeError: `surrogate` is not a Surrogate or `mean_fn` is not callable.

  References:
    Hammersley & Morton (1956), "A new Monte Carlo technique: antithetic
    variates"; Ren, Zhao & Ermon (2019), "Adaptive antithetic sampling for
    variance reduction".
  """

  vv.surrogate(surrogate)
  vv.callable_arg("mean_fn", mean_fn, "a function params -> E_q[z]")

  def sample_and_log_prob(params, key, sample_size):
    z, log_q = surrogate.sample_and_log_prob(params, key,
                                             (sample_size + 1) // 2)
    mirrored = jax.tree_util.tree_map(lambda m, x: 2 * m - x,
                                      mean_fn(params), z)
    z = jax.tree_util.tree_map(
        lambda a, b: jnp.concatenate([a, b])[:sample_size], z, mirrored)
    return z, jnp.concatenate([log_q, log_q])[:sample_size]

  fields = {"sample_and_log_prob": sample_and_log_prob}
  if "distribution_fn" in getattr(surrogate, "_fields", ()):
    fields["distribution_fn"] = None
  return surrogate._replace(**fields)
