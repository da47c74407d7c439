"""Full-rank Gaussian surrogate (scale times unit-lower Cholesky, or raw Cholesky)."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_probability.substrates.jax as tfp

from vi_jax.model import bijectors as bij_lib
from vi_jax._src.types import Array, Params
from vi_jax.surrogates.base import (Surrogate, default_dtype, initial_loc,
                                    transformed_surrogate)

tfb = tfp.bijectors

PARAMETERIZATIONS = ("scaled_unit_lower_cholesky", "fill_scale_tril")


def _softplus_inverse(x):
  return x + jnp.log(-jnp.expm1(-x))


def _fill_scale_tril(dtype):
  return tfb.FillScaleTriL(diag_bijector=tfb.Softplus(),
                           diag_shift=jnp.asarray(1e-5, dtype))


def full_rank_scale_tril(params: Params) -> Array:
  """The lower Cholesky factor `L: [dim, dim]` of a `full_rank_normal`'s params.

  Works for both parameterizations (told apart by the params' keys).

  Args:
    params: `full_rank_normal` params.

  Returns:
    `L`, with `q(u) = N(u; params["loc"], L L^T)`.
  """
  if "raw_scale_tril" in params:
    raw = params["raw_scale_tril"]
    return _fill_scale_tril(raw.dtype).forward(raw)
  scale = jax.nn.softplus(params["raw_scale"])
  dim = scale.shape[-1]
  rows, cols = np.tril_indices(dim, -1)
  unit = jnp.eye(dim, dtype=scale.dtype).at[rows, cols].set(
      params["unit_tril"])
  return scale[:, None] * unit


def full_rank_params(loc, scale_tril, *,
                     parameterization: str = "scaled_unit_lower_cholesky"
                     ) -> Params:
  """`full_rank_normal` params of the Gaussian `N(loc, scale_tril scale_tril^T)`.

  The inverse of (`params["loc"]`, `full_rank_scale_tril(params)`); pure and
  traceable (jit, vmap).

  Args:
    loc: `[dim]` unconstrained mean.
    scale_tril: `[dim, dim]` lower Cholesky factor with a positive diagonal.
    parameterization: as for `full_rank_normal`.

  Returns:
    The params pytree of `full_rank_normal(..., parameterization=...)`.

  Raises:
    ValueError: unknown `parameterization`.
  """
  _check_parameterization(parameterization)
  loc, scale_tril = jnp.asarray(loc), jnp.asarray(scale_tril)
  if parameterization == "fill_scale_tril":
    return {"loc": loc,
            "raw_scale_tril": _fill_scale_tril(scale_tril.dtype).inverse(
                scale_tril)}
  diag = jnp.diagonal(scale_tril)
  rows, cols = np.tril_indices(scale_tril.shape[-1], -1)
  return {"loc": loc, "raw_scale": _softplus_inverse(diag),
          "unit_tril": (scale_tril / diag[:, None])[rows, cols]}


def _check_parameterization(parameterization):
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}; "
                     f"got {parameterization!r}.")


def full_rank_normal(event_shape, bijector=None, *, init_loc=None,
                     init_scale: float = 0.1, init_loc_radius: float = 0.,
                     parameterization: str = "scaled_unit_lower_cholesky",
                     dtype=None) -> Surrogate:
  """Full-rank Gaussian over the unconstrained latents, pushed through bijectors.

  q(u) = N(u; loc, L L^T) over the flat unconstrained vector `u: [dim]`.

  `parameterization="scaled_unit_lower_cholesky"` (default, NumPyro's
  AutoMultivariateNormal `scaled_unit_lower_cholesky` constraint):
  `L = diag(softplus(raw_scale)) @ U`, U unit lower triangular with its
  strictly lower entries `unit_tril` (row-major `np.tril_indices(dim, -1)`
  order). The off-diagonal params are dimensionless regression coefficients
  and the scales live on a log-like axis, so one constant Adam learning rate
  suits both; this is robust where the raw Cholesky diverges. Params:
  `{"loc": [dim], "raw_scale": [dim], "unit_tril": [dim * (dim - 1) / 2]}`.

  `parameterization="fill_scale_tril"` (the earlier default, TFP's
  `FillScaleTriL`: fill the lower triangle, softplus on the diagonal plus
  1e-5): params `{"loc": [dim], "raw_scale_tril": [dim * (dim + 1) / 2]}`.
  The off-diagonal entries of L carry the units of the latents, which makes
  a constant learning rate fragile on badly scaled posteriors.

  `full_rank_scale_tril(params)` reads L from either; `full_rank_params(loc,
  scale_tril)` builds params from a Gaussian (e.g. a Pathfinder or Laplace
  approximation).

  Initialization: loc as in `mean_field_normal` (0, or `init_loc`, optionally
  jittered by `init_loc_radius`) and `L = init_scale * I` (0.1 by default, as
  NumPyro's AutoMultivariateNormal).

  Args:
    event_shape: a shape or pytree of shapes.
    bijector: None, one bijector, or a pytree of bijectors matching event_shape.
    init_loc: optional initial unconstrained location.
    init_scale: initial standard deviation of every unconstrained coordinate.
    init_loc_radius: half-width of the uniform jitter added to `init_loc`.
    parameterization: `"scaled_unit_lower_cholesky"` or `"fill_scale_tril"`.
    dtype: floating dtype of the params (default: JAX's default float).

  Returns:
    A `Surrogate` (shapes as for `mean_field_normal`).

  Raises:
    ValueError: bad `event_shape`, mismatched `bijector`, `init_scale <= 0`,
      unknown `parameterization`.

  References:
    Kucukelbir et al. 2017 (ADVI full-rank); numpyro AutoMultivariateNormal
    and `numpyro.distributions.transforms.ScaledUnitLowerCholeskyTransform`;
    tfp.experimental.vi.build_affine_surrogate_posterior.
  """
  if not init_scale > 0:
    raise ValueError(f"init_scale must be > 0; got {init_scale}.")
  _check_parameterization(parameterization)
  space = bij_lib.latent_space(event_shape, bijector)
  dtype = default_dtype(dtype)

  def init_fn(key):
    loc = initial_loc(space, key, init_loc, init_loc_radius, dtype)
    tril = jnp.eye(space.dim, dtype=dtype) * jnp.asarray(init_scale, dtype)
    return full_rank_params(loc, tril, parameterization=parameterization)

  def distribution_fn(params):
    return distrax.MultivariateNormalTri(params["loc"],
                                         full_rank_scale_tril(params))

  return transformed_surrogate(space, init_fn, distribution_fn)
