"""Mean-field (diagonal) Gaussian surrogate: ADVI's mean-field family."""

import distrax
import jax
import jax.numpy as jnp

from vi_jax.model import bijectors as bij_lib
from vi_jax.surrogates.base import (Surrogate, default_dtype, initial_loc,
                                    transformed_surrogate)


def mean_field_normal(event_shape, bijector=None, *, init_loc=None,
                      init_scale: float = 0.1, init_loc_radius: float = 0.,
                      dtype=None) -> Surrogate:
  """Mean-field Gaussian over the unconstrained latents, pushed through bijectors.

  q(u) = prod_i N(u_i; loc_i, scale_i) over the flat unconstrained vector
  `u: [dim]`, z = bijector(u) per latent. The params are
  `{"loc": [dim], "raw_scale": [dim]}` with `scale = softplus(raw_scale)`
  (NumPyro's AutoNormal parameterization).

  Initialization: loc 0 (or `init_loc`, in the unconstrained space, as an
  array `[dim]`, a scalar, or a pytree matching event_shape), optionally
  jittered by uniform(-init_loc_radius, init_loc_radius) drawn from the init
  key (NumPyro's `init_to_uniform(radius=2)` uses 2), and scale `init_scale`
  = 0.1 (NumPyro AutoNormal's default; Stan's ADVI starts at 1).

  Args:
    event_shape: a shape or pytree of shapes (see `vi_jax.model.bijectors.latent_space`).
    bijector: None, one bijector, or a pytree of bijectors matching event_shape.
    init_loc: optional initial unconstrained location.
    init_scale: initial standard deviation of every unconstrained coordinate.
    init_loc_radius: half-width of the uniform jitter added to `init_loc`.
    dtype: floating dtype of the params (default: JAX's default float).

  Returns:
    A `Surrogate`. `sample_and_log_prob` returns z with leaves
    `[sample_size, *event_shape_leaf]` and `log_q: [sample_size]`.

  Raises:
    ValueError: bad `event_shape`, a `bijector` pytree whose structure does not
      match it, or `init_scale <= 0`.

  References:
    Kucukelbir et al. 2017, "Automatic Differentiation Variational Inference";
    numpyro.infer.autoguide.AutoNormal.
  """
  if not init_scale > 0:
    raise ValueError(f"init_scale must be > 0; got {init_scale}.")
  space = bij_lib.latent_space(event_shape, bijector)
  dtype = default_dtype(dtype)

  def init_fn(key):
    loc = initial_loc(space, key, init_loc, init_loc_radius, dtype)
    raw = jnp.full((space.dim,), init_scale, dtype)
    return {"loc": loc, "raw_scale": raw + jnp.log(-jnp.expm1(-raw))}

  def distribution_fn(params):
    return distrax.MultivariateNormalDiag(
        params["loc"], jax.nn.softplus(params["raw_scale"]))

  return transformed_surrogate(space, init_fn, distribution_fn)
