"""The distrax distribution of z for families built on a flat-vector distribution.

`Surrogate.distribution_fn` is `params -> distrax.Distribution` of z in the
constrained space. For a single-array latent this is the flat-vector
distribution pushed through the latent's bijector (and reshape), expressed as a
`distrax.Transformed` over a thin `distrax.Bijector` adapter of the
`LatentSpace` maps (no new bijector math: it calls the latent's own bijector).
A pytree of latents has no single distrax distribution, so it gets None.
"""

from typing import Callable, Optional

import distrax
import jax.numpy as jnp

from vi_jax.model import bijectors as bij_lib
from vi_jax._src.types import Params


class _LatentSpaceBijector(distrax.Bijector):
  """`u: [*batch, dim] -> z: [*batch, *event_shape]` through a LatentSpace."""

  def __init__(self, space: bij_lib.LatentSpace):
    super().__init__(event_ndims_in=1,
                     event_ndims_out=len(space.event_shape))
    self._space = space

  def _flat_batch(self, x, ndims):
    batch = x.shape[:x.ndim - ndims]
    return batch, jnp.reshape(x, (-1,) + x.shape[x.ndim - ndims:])

  def forward_and_log_det(self, x):
    batch, u = self._flat_batch(x, 1)
    z, ldj = self._space.forward_and_log_det(u)
    return (jnp.reshape(z, batch + z.shape[1:]), jnp.reshape(ldj, batch))

  def inverse_and_log_det(self, y):
    batch, z = self._flat_batch(y, len(self._space.event_shape))
    u, ildj = self._space.inverse_and_log_det(z)
    return (jnp.reshape(u, batch + u.shape[1:]), jnp.reshape(ildj, batch))


def z_distribution_fn(
    space: bij_lib.LatentSpace,
    distribution_fn: Callable[[Params], distrax.Distribution],
) -> Optional[Callable[[Params], distrax.Distribution]]:
  """`params -> distrax distribution of z`, or None for a pytree of latents.

  Args:
    space: the `LatentSpace`.
    distribution_fn: `params -> distrax.Distribution` over `u: [space.dim]`.

  Returns:
    The flat distribution itself when z is one vector `[dim]` with no bijector
    (so analytic KLs registered for it keep working), otherwise a
    `distrax.Transformed` of it; None when `space.event_shape` is a pytree.
  """
  if not bij_lib.is_shape(space.event_shape):
    return None
  if space.is_identity and tuple(space.event_shape) == (space.dim,):
    return distribution_fn
  bijector = _LatentSpaceBijector(space)
  return lambda params: distrax.Transformed(distribution_fn(params), bijector)


def with_distribution_fn(surrogate, space, distribution_fn):
  """`surrogate` with `distribution_fn` set where a single distribution exists."""
  return surrogate._replace(
      distribution_fn=z_distribution_fn(space, distribution_fn))
