"""Any user-built distribution over the unconstrained latents as a Surrogate."""

from typing import Any, Callable, Optional

import distrax
import jax
import jax.numpy as jnp
import tensorflow_probability.substrates.jax as tfp

from vi_jax.model import bijectors as bij_lib
from vi_jax._src.types import Params
from vi_jax.surrogates._distribution import with_distribution_fn
from vi_jax.surrogates.base import transformed_surrogate

tfb, tfd = tfp.bijectors, tfp.distributions


def _as_distrax(dist) -> distrax.Distribution:
  if isinstance(dist, distrax.Distribution):
    return dist
  if isinstance(dist, tfd.Distribution):
    return distrax.as_distribution(dist)
  raise TypeError(
      "build_fn must return a distrax distribution or a TFP-on-JAX "
      f"distribution; it returned {type(dist).__name__}.")


def from_distribution(build_fn: Callable[[Params], Any], init_params,
                      bijector=None, *, event_shape=None,
                      reparameterized: Optional[bool] = None):
  """Turns `params -> distribution` into a Surrogate (TFP's build-surrogate pattern).

  The user writes any distrax (or TFP-on-JAX) distribution over the
  unconstrained latents as a function of a params pytree, e.g.
  `lambda p: distrax.MultivariateNormalDiag(p["loc"], jnp.exp(p["log_scale"]))`
  or a `distrax.Transformed` with a learned flow; vi_jax adds the support
  bijectors, the pytree plumbing and the `Surrogate` contract. Transformations
  of params belong inside `build_fn` (TFP's "deferred" parameters).

  Args:
    build_fn: `params -> distribution` with no batch shape. Its event shape is
      the unconstrained shape of the latent, or `[dim]`, the flat
      unconstrained vector (split in the order of
      `jax.tree_util.tree_leaves(event_shape)` for a pytree of latents).
    init_params: the initial params pytree, or `(key) -> params`.
    bijector: None, one bijector, or a pytree of bijectors matching the
      latents, mapping the distribution's support onto each latent's.
    event_shape: None (one array latent shaped like the distribution's event;
      a shape-changing TFP bijector then needs `event_shape` given), or a
      shape / pytree of shapes of the constrained latents.
    reparameterized: whether draws are differentiable in params; None reads
      TFP's `reparameterization_type` when the distribution has one, else True.

  Returns:
    A `Surrogate`; `distribution_fn` is set for a single-array latent.

  Raises:
    TypeError: `build_fn` does not return a distribution.
    ValueError: the distribution has a batch shape, or its event shape does not
      match `event_shape` / the bijectors.

  References:
    tfp.experimental.vi (build surrogate posteriors from distribution-making
    functions); tfp.vi.fit_surrogate_posterior's `surrogate_posterior`.
  """
  init_fn = init_params if callable(init_params) else (lambda key: init_params)

  def distribution_fn(params):
    return _as_distrax(build_fn(params))

  # Built once at construction, eagerly, to read shapes and the
  # reparameterization type (cheap: no sampling).
  raw0 = build_fn(init_fn(jax.random.key(0)))
  dist0 = _as_distrax(raw0)
  dist_event = tuple(int(d) for d in dist0.event_shape)
  if tuple(dist0.batch_shape):
    raise ValueError(
        "build_fn must return a distribution with no batch shape; got batch "
        f"shape {tuple(dist0.batch_shape)} (wrap it in distrax.Independent).")
  if event_shape is None:
    event_shape = dist_event
  space = bij_lib.latent_space(event_shape, bijector)
  single = bij_lib.is_shape(space.event_shape)
  allowed = [(space.dim,)]
  if single:
    allowed.append(tuple(space.unconstrained_shapes[0]))
  if dist_event not in allowed:
    raise ValueError(
        f"build_fn's distribution has event shape {dist_event}, but the latents "
        f"(event_shape={space.event_shape}, bijector={bijector!r}) need one of "
        f"{sorted(set(allowed))} (the latent's unconstrained shape, or the flat "
        "unconstrained vector [dim]).")

  if len(dist_event) == 1:
    flat_distribution_fn = distribution_fn
  else:
    reshape = distrax.as_bijector(
        tfb.Reshape(event_shape_out=(space.dim,), event_shape_in=dist_event))
    flat_distribution_fn = lambda p: distrax.Transformed(distribution_fn(p),
                                                         reshape)

  surrogate = transformed_surrogate(space, init_fn, flat_distribution_fn)
  if reparameterized is None:
    reparameterized = _is_reparameterized(raw0)
  surrogate = surrogate._replace(reparameterized=bool(reparameterized))
  if single and space.is_identity and dist_event == tuple(space.event_shape):
    return surrogate._replace(distribution_fn=distribution_fn)
  return with_distribution_fn(surrogate, space, flat_distribution_fn)


def _is_reparameterized(dist) -> bool:
  """TFP's reparameterization_type; for distrax, False for integer draws."""
  rt = getattr(dist, "reparameterization_type", None)
  if rt is not None:
    return rt == tfd.FULLY_REPARAMETERIZED
  dtype = getattr(dist, "dtype", None)
  return dtype is None or jnp.issubdtype(dtype, jnp.inexact)
