"""The Surrogate concept and the composition every Gaussian family shares.

A `Surrogate` is a NamedTuple of pure functions over an unconstrained params
pytree (optax's GradientTransformation is the model). `transformed_surrogate`
builds one from a distrax distribution over the flat unconstrained vector and
a `LatentSpace` (the per-latent bijectors): draws come from the distribution's
fused `sample_and_log_prob`, go through each latent's bijector forward, and the
log-det-Jacobian is subtracted from `log_q`, exactly as
`distrax.Transformed` does for one bijector.
"""

from typing import Callable, NamedTuple, Optional

import distrax
import jax
import jax.numpy as jnp

from vi_jax.model import bijectors as bij_lib
from vi_jax._src.types import Array, InitFn, LogProbFn, Params, SampleAndLogProbFn
from vi_jax.model.target import materialize
from vi_jax._src.validation import positive_int


class Surrogate(NamedTuple):
  """A surrogate posterior: pure functions over an unconstrained params pytree.

  Attributes:
    init: `(key) -> params`.
    sample_and_log_prob: `(params, key, sample_size) -> (z, log_q)`, z a pytree
      shaped like `event_shape` with leading `[sample_size]` on every leaf, in
      each latent's support; `log_q: [sample_size]` its density in that space,
      log-det-Jacobian included.
    log_prob: `(params, z) -> log_q` for z with leading batch axes `[*batch]`.
    reparameterized: True when `z` from `sample_and_log_prob` is a
      differentiable function of params (reparameterization gradients apply);
      False for e.g. discrete surrogates, where objectives fall back to the
      score-function estimator.
    distribution_fn: optional `params -> distrax.Distribution` of z (constrained
      space), for objectives that need more than draws (analytic KL). None when
      the family has no single distrax distribution over z.
  """
  init: InitFn
  sample_and_log_prob: SampleAndLogProbFn
  log_prob: LogProbFn
  reparameterized: bool = True
  distribution_fn: Optional[Callable[[Params], distrax.Distribution]] = None


def check_sample_size(sample_size) -> int:
  """Validates `sample_size` (a Python int >= 1) and returns it."""
  return positive_int("sample_size", sample_size)


def to_latents(space: bij_lib.LatentSpace, u: Array, log_q_u: Array):
  """Flat unconstrained draws `u: [n, dim]` with their density `log_q_u: [n]`
  -> `(z, log_q)`: z a pytree like `space.event_shape` with leading [n] in each
  latent's support, log_q its density there (log-det-Jacobian included)."""
  if space.is_identity:
    return space.unflatten(u), log_q_u
  z, ldj = space.forward_and_log_det(u)
  return z, log_q_u - ldj


def from_latents(space: bij_lib.LatentSpace, z):
  """The inverse of `to_latents` for given draws: `(u, ildj, batch)`.

  z: pytree with leading `batch` dims; u: `[prod(batch), dim]` flat
  unconstrained values; ildj: `[prod(batch)]` (or 0.) the inverse
  log-det-Jacobian to add to the density of u.
  """
  batch = space.batch_shape(z)
  z_flat = jax.tree_util.tree_map(
      lambda leaf: jnp.reshape(leaf, (-1,) + jnp.shape(leaf)[len(batch):]), z)
  if space.is_identity:
    return space.flatten(z_flat), 0., batch
  u, ildj = space.inverse_and_log_det(z_flat)
  return u, ildj, batch


def transformed_surrogate(
    space: bij_lib.LatentSpace,
    init_fn: InitFn,
    distribution_fn: Callable[[Params], distrax.Distribution],
) -> Surrogate:
  """Pushes a distribution over the flat unconstrained vector through `space`.

  Args:
    space: a `vi_jax.model.bijectors.LatentSpace` (event shapes and bijectors).
    init_fn: `(key) -> params`.
    distribution_fn: `params -> distrax.Distribution` with event shape
      `[space.dim]` and no batch shape.

  Returns:
    A `Surrogate` whose draws lie in each latent's support. Its
    `distribution_fn` is `distribution_fn` itself when that is already the
    distribution of z (one array latent of shape `[dim]`, no bijector), so
    objectives can use its closed-form KL; None otherwise.
  """

  def sample_and_log_prob(params, key, sample_size):
    sample_size = check_sample_size(sample_size)
    u, log_q_u = _sample_and_log_prob(distribution_fn(params), key,
                                      sample_size)
    return to_latents(space, u, log_q_u)

  def log_prob(params, z):
    u, ildj, batch = from_latents(space, z)
    log_q = distribution_fn(params).log_prob(u) + ildj
    return jnp.reshape(log_q, batch)

  is_distribution_of_z = (space.is_identity and
                          bij_lib.is_shape(space.event_shape) and
                          tuple(space.event_shape) == (space.dim,))
  return Surrogate(init=init_fn, sample_and_log_prob=sample_and_log_prob,
                   log_prob=log_prob,
                   distribution_fn=(distribution_fn if is_distribution_of_z
                                    else None))


def _sample_and_log_prob(dist: distrax.Distribution, key, n: int):
  """`dist.sample_and_log_prob(seed=key, sample_shape=(n,))`, with the base
  draws of a `distrax.Transformed` (every Gaussian family: MVNDiag, MVNTri,
  ...) materialized before its bijector.

  The same computation as `distrax.Transformed`'s own (base
  `sample_and_log_prob`, then the bijector's `forward_and_log_det`); the base
  draws (the normal sampler's inverse-erf polynomial) are computed once
  instead of once in every XLA:CPU fusion that reads them: the reparameterized
  gradient reduces `g * eps` over the draws, and a reduction that recomputes
  its elementwise producer does so in a scalar loop (see
  `vi_jax.model.target.materialize`).
  """
  if not isinstance(dist, distrax.Transformed):
    return dist.sample_and_log_prob(seed=key, sample_shape=(n,))
  x = materialize(dist.distribution.sample(seed=key, sample_shape=(n,)))
  log_q_x = dist.distribution.log_prob(x)
  y, ldj = dist.bijector.forward_and_log_det(x)
  return y, log_q_x - ldj


def initial_loc(space: bij_lib.LatentSpace, key, loc, radius, dtype):
  """The initial unconstrained loc `[space.dim]` shared by the Gaussian families.

  `loc` None gives zeros (plus uniform(-radius, radius) jitter when radius > 0,
  NumPyro's `init_to_uniform`); an array `[dim]` or a pytree of unconstrained
  arrays matching event_shape is used as given.
  """
  if loc is None:
    out = jnp.zeros((space.dim,), dtype)
  elif isinstance(loc, (dict, tuple, list)) or (
      not hasattr(loc, "shape") and not isinstance(loc, (int, float))):
    out = space.flatten(jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, dtype), loc))
  else:
    out = jnp.broadcast_to(jnp.asarray(loc, dtype), (space.dim,))
  if radius:
    out = out + jax.random.uniform(key, (space.dim,), dtype, -radius, radius)
  return out


def default_dtype(dtype):
  """`dtype`, or JAX's default float (float64 when jax_enable_x64 is on)."""
  return jnp.dtype(dtype) if dtype is not None else jnp.zeros(()).dtype
