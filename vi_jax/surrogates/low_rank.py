"""Gaussian surrogate with a diagonal-plus-low-rank scale."""

import distrax
import jax
import jax.numpy as jnp

from vi_jax.model import bijectors as bij_lib
from vi_jax.surrogates._distribution import with_distribution_fn
from vi_jax.surrogates.base import (Surrogate, default_dtype, initial_loc,
                                    transformed_surrogate)
from vi_jax._src.validation import positive_int


def low_rank_normal(event_shape, rank: int, bijector=None, *, init_loc=None,
                    init_scale: float = 0.1, init_factor_scale: float = 0.01,
                    init_loc_radius: float = 0., dtype=None) -> Surrogate:
  """Gaussian with scale `diag(d) + U U^T` over the unconstrained latents.

  q(u) = N(u; loc, S S^T) over the flat unconstrained vector `u: [dim]`, with
  the symmetric positive-definite scale `S = diag(softplus(raw_scale_diag)) +
  U U^T`, `U: [dim, rank]` (distrax's `MultivariateNormalDiagPlusLowRank` with
  `scale_u_matrix = scale_v_matrix = U`: sampling costs O(dim * rank) and the
  log-determinant and solve O(dim * rank^2) by the matrix determinant lemma
  and Woodbury's identity). The covariance `S^2 = diag(d)^2 + (a rank <= 2k
  term)` captures `rank` correlated directions, as NumPyro's
  AutoLowRankMultivariateNormal (which parameterizes the covariance
  `W W^T + diag` instead) does, at a cost linear in `dim`.

  Params: `{"loc": [dim], "raw_scale_diag": [dim], "scale_factor": [dim, rank]}`.
  Initialization: loc as in `mean_field_normal`; `d = init_scale`; `U` drawn
  i.i.d. N(0, init_factor_scale^2) from the init key (with `S = d + U U^T`,
  `U = 0` is a stationary point of the ELBO, so `U` must start away from 0).

  Args:
    event_shape: a shape or pytree of shapes.
    rank: Python int >= 1, the number of columns of `U`.
    bijector: None, one bijector, or a pytree of bijectors matching event_shape.
    init_loc: optional initial unconstrained location.
    init_scale: initial diagonal of the scale.
    init_factor_scale: standard deviation of the random initial `U` (> 0).
    init_loc_radius: half-width of the uniform jitter added to `init_loc`.
    dtype: floating dtype of the params.

  Returns:
    A `Surrogate` (shapes as for `mean_field_normal`), with `distribution_fn`
    set for a single-array latent.

  Raises:
    ValueError: bad `event_shape`, mismatched `bijector`, `rank < 1`,
      `init_scale <= 0` or `init_factor_scale <= 0`.

  References:
    numpyro.infer.autoguide.AutoLowRankMultivariateNormal; Ong, Nott, Smith
    2018, "Gaussian variational approximation with a factor covariance
    structure"; distrax.MultivariateNormalDiagPlusLowRank.
  """
  rank = positive_int("rank", rank)
  if not init_scale > 0:
    raise ValueError(f"init_scale must be > 0; got {init_scale}.")
  if not init_factor_scale > 0:
    raise ValueError(
        f"init_factor_scale must be > 0; got {init_factor_scale}.")
  space = bij_lib.latent_space(event_shape, bijector)
  dtype = default_dtype(dtype)

  def init_fn(key):
    key_loc, key_u = jax.random.split(key)
    loc = initial_loc(space, key_loc, init_loc, init_loc_radius, dtype)
    raw = jnp.full((space.dim,), init_scale, dtype)
    factor = init_factor_scale * jax.random.normal(key_u, (space.dim, rank),
                                                   dtype)
    return {"loc": loc, "raw_scale_diag": raw + jnp.log(-jnp.expm1(-raw)),
            "scale_factor": factor}

  def distribution_fn(params):
    u = params["scale_factor"]
    return distrax.MultivariateNormalDiagPlusLowRank(
        params["loc"], jax.nn.softplus(params["raw_scale_diag"]), u, u)

  surrogate = transformed_surrogate(space, init_fn, distribution_fn)
  return with_distribution_fn(surrogate, space, distribution_fn)
