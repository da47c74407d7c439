"""Point-mass (MAP) surrogate."""

import jax
import jax.numpy as jnp

from vi_jax.model import bijectors as bij_lib
from vi_jax.surrogates.base import (Surrogate, check_sample_size, default_dtype,
                                    initial_loc)


def delta(event_shape, bijector=None, *, init_loc=None,
          init_loc_radius: float = 0., dtype=None) -> Surrogate:
  """A point mass at `bijector(loc)`: fitting it with the ELBO gives the MAP.

  Every draw equals the point; `log_q` is 0 by convention (a Dirac delta has no
  density), so the negative ELBO reduces to `-log p(z)`: the MAP estimate in
  the constrained space, with no Jacobian term (NumPyro's AutoDelta, Bean
  Machine's MAP autoguide). Params: `{"loc": [dim]}` unconstrained.

  Args:
    event_shape: a shape or pytree of shapes.
    bijector: None, one bijector, or a pytree of bijectors matching event_shape.
    init_loc: optional initial unconstrained location (array `[dim]`, scalar, or
      pytree matching event_shape); default 0.
    init_loc_radius: half-width of uniform jitter added at init.
    dtype: floating dtype of the params.

  Returns:
    A `Surrogate`: `sample_and_log_prob` gives z with leaves
    `[sample_size, *event_shape_leaf]` (all equal) and `log_q = zeros([sample_size])`;
    `log_prob(params, z)` is 0 where z equals the point and -inf elsewhere
    (distrax.Deterministic's convention).

  Raises:
    ValueError: bad `event_shape` or mismatched `bijector`.

  References:
    numpyro.infer.autoguide.AutoDelta; Bean Machine's MAP inference.
  """
  space = bij_lib.latent_space(event_shape, bijector)
  dtype = default_dtype(dtype)

  def init_fn(key):
    return {"loc": initial_loc(space, key, init_loc, init_loc_radius, dtype)}

  def _point(params, n):
    u = jnp.broadcast_to(params["loc"], (n, space.dim))
    if space.is_identity:
      return space.unflatten(u)
    return space.forward_and_log_det(u)[0]

  def sample_and_log_prob(params, key, sample_size):
    del key
    sample_size = check_sample_size(sample_size)
    return (_point(params, sample_size),
            jnp.zeros((sample_size,), params["loc"].dtype))

  def log_prob(params, z):
    batch = space.batch_shape(z)
    point = _point(params, 1)
    equal = jax.tree_util.tree_map(
        lambda zl, pl: jnp.all(
            jnp.reshape(zl == pl[0], batch + (-1,)), axis=-1), z, point)
    hit = jnp.all(jnp.stack(jax.tree_util.tree_leaves(equal)), axis=0)
    return jnp.where(hit, 0., -jnp.inf).astype(params["loc"].dtype)

  return Surrogate(init=init_fn, sample_and_log_prob=sample_and_log_prob,
                   log_prob=log_prob)
