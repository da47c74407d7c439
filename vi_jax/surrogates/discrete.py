"""Discrete surrogates (Bernoulli, categorical): not reparameterizable.

Their draws are integers with no gradient path to the params, so
`reparameterized=False` and the objectives in `vi_jax.objectives.losses` use the
score-function estimator for them (Edward's KLqp does the same). Draws are
integer arrays; the target receives them as such.
"""

import distrax
import jax.numpy as jnp

from vi_jax.model.bijectors import is_shape
from vi_jax.surrogates.base import Surrogate, check_sample_size, default_dtype
from vi_jax._src.validation import integer


def _event_shape(event_shape) -> tuple:
  if not is_shape(event_shape):
    raise ValueError(
        f"event_shape must be one shape (a tuple of ints); got {event_shape!r}.")
  return (int(event_shape),) if isinstance(event_shape, int) else tuple(
      int(d) for d in event_shape)


def _from_distribution(init_fn, distribution_fn) -> Surrogate:

  def sample_and_log_prob(params, key, sample_size):
    sample_size = check_sample_size(sample_size)
    return distribution_fn(params).sample_and_log_prob(
        seed=key, sample_shape=(sample_size,))

  def log_prob(params, z):
    return distribution_fn(params).log_prob(z)

  return Surrogate(init=init_fn, sample_and_log_prob=sample_and_log_prob,
                   log_prob=log_prob, reparameterized=False,
                   distribution_fn=distribution_fn)


def bernoulli(event_shape=(), *, init_logits=0., dtype=None) -> Surrogate:
  """Independent Bernoulli latents, z in {0, 1}^event_shape.

  Params `{"logits": [*event_shape]}`; q(z) = prod_i Bernoulli(z_i; logits_i).

  Args:
    event_shape: the shape of the binary latent array.
    init_logits: initial logits (a scalar or an array of `event_shape`).
    dtype: float dtype of the logits (default: JAX's default float).

  Returns:
    A `Surrogate` with `reparameterized=False`; draws are int32
    `[sample_size, *event_shape]`, `log_q: [sample_size]`.

  Raises:
    ValueError: `event_shape` is not one shape.

  References:
    distrax.Bernoulli; Edward's KLqp with discrete latents (score function).
  """
  shape = _event_shape(event_shape)
  dtype = default_dtype(dtype)

  def init_fn(key):
    del key
    return {"logits": jnp.broadcast_to(jnp.asarray(init_logits, dtype), shape)}

  def distribution_fn(params):
    return distrax.Independent(distrax.Bernoulli(logits=params["logits"]),
                               reinterpreted_batch_ndims=len(shape))

  return _from_distribution(init_fn, distribution_fn)


def categorical(num_categories: int, event_shape=(), *, init_logits=0.,
                dtype=None) -> Surrogate:
  """Independent categorical latents, z in {0, ..., K-1}^event_shape.

  Params `{"logits": [*event_shape, K]}`.

  Args:
    num_categories: K >= 2.
    event_shape: the shape of the integer latent array.
    init_logits: initial logits (scalar or `[*event_shape, K]`).
    dtype: float dtype of the logits.

  Returns:
    A `Surrogate` with `reparameterized=False`; draws are int32
    `[sample_size, *event_shape]`.

  Raises:
    ValueError: `num_categories < 2` or a bad `event_shape`.

  References:
    distrax.Categorical.
  """
  num_categories = integer("num_categories", num_categories, minimum=2)
  shape = _event_shape(event_shape)
  dtype = default_dtype(dtype)

  def init_fn(key):
    del key
    return {"logits": jnp.broadcast_to(jnp.asarray(init_logits, dtype),
                                       shape + (num_categories,))}

  def distribution_fn(params):
    return distrax.Independent(distrax.Categorical(logits=params["logits"]),
                               reinterpreted_batch_ndims=len(shape))

  return _from_distribution(init_fn, distribution_fn)
