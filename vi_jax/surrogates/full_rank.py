"""Full-rank Gaussian surrogate (Cholesky / scale_tril parameterization)."""

import distrax
import jax.numpy as jnp
import tensorflow_probability.substrates.jax as tfp

from vi_jax import bijectors as bij_lib
from vi_jax.surrogates.base import (Surrogate, default_dtype, initial_loc,
                                    transformed_surrogate)

tfb = tfp.bijectors


def full_rank_normal(event_shape, bijector=None, *, init_loc=None,
                     init_scale: float = 0.1, init_loc_radius: float = 0.,
                     dtype=None) -> Surrogate:
  """Full-rank Gaussian over the unconstrained latents, pushed through bijectors.

  q(u) = N(u; loc, L L^T) over the flat unconstrained vector `u: [dim]`, with
  `L = FillScaleTriL(raw_scale_tril)` (TFP's bijector: fill the lower triangle,
  softplus on the diagonal plus 1e-5). Params: `{"loc": [dim],
  "raw_scale_tril": [dim * (dim + 1) / 2]}`.

  Initialization: loc as in `mean_field_normal` (0, or `init_loc`, optionally
  jittered by `init_loc_radius`) and `L = init_scale * I` (0.1 by default, as
  NumPyro's AutoMultivariateNormal).

  Args:
    event_shape: a shape or pytree of shapes.
    bijector: None, one bijector, or a pytree of bijectors matching event_shape.
    init_loc: optional initial unconstrained location.
    init_scale: initial standard deviation of every unconstrained coordinate.
    init_loc_radius: half-width of the uniform jitter added to `init_loc`.
    dtype: floating dtype of the params (default: JAX's default float).

  Returns:
    A `Surrogate` (shapes as for `mean_field_normal`).

  Raises:
    ValueError: bad `event_shape`, mismatched `bijector`, `init_scale <= 0`.

  References:
    Kucukelbir et al. 2017 (ADVI full-rank); numpyro AutoMultivariateNormal;
    tfp.experimental.vi.build_affine_surrogate_posterior.
  """
  if not init_scale > 0:
    raise ValueError(f"init_scale must be > 0; got {init_scale}.")
  space = bij_lib.latent_space(event_shape, bijector)
  dtype = default_dtype(dtype)
  fill = tfb.FillScaleTriL(diag_bijector=tfb.Softplus(),
                           diag_shift=jnp.asarray(1e-5, dtype))

  def init_fn(key):
    loc = initial_loc(space, key, init_loc, init_loc_radius, dtype)
    tril = jnp.eye(space.dim, dtype=dtype) * jnp.asarray(init_scale, dtype)
    return {"loc": loc, "raw_scale_tril": fill.inverse(tril)}

  def distribution_fn(params):
    return distrax.MultivariateNormalTri(params["loc"],
                                         fill.forward(params["raw_scale_tril"]))

  return transformed_surrogate(space, init_fn, distribution_fn)
