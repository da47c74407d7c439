"""Type aliases and Protocols for vi_jax's function types.

Follows optax's habit (optax/_src/base.py): every field of a concept
NamedTuple is typed by a Protocol whose docstring holds Args/Returns.
"""

from typing import Any, Protocol

import jax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
PRNGKey = jax.Array
PyTree = Any
Params = PyTree


class InitFn(Protocol):

  def __call__(self, key: PRNGKey) -> Params:
    """Builds the initial unconstrained params of a surrogate.

    Args:
      key: a PRNG key (used only by surrogates with random initialization).

    Returns:
      A pytree of unconstrained arrays.
    """


class SampleAndLogProbFn(Protocol):

  def __call__(self, params: Params, key: PRNGKey,
               sample_size: int) -> tuple[PyTree, Array]:
    """Draws from the surrogate and returns the draws' log density.

    Args:
      params: the surrogate's params pytree.
      key: a PRNG key.
      sample_size: a Python int, the number of draws.

    Returns:
      `(z, log_q)`: `z` is a pytree shaped like `event_shape` with a leading
      `[sample_size]` axis on every leaf, in each latent's support; `log_q` is
      `[sample_size]`, the density of `z` in the constrained space (the
      bijector's log-det-Jacobian included).
    """


class LogProbFn(Protocol):

  def __call__(self, params: Params, z: PyTree) -> Array:
    """Log density of given points under the surrogate.

    Args:
      params: the surrogate's params pytree.
      z: a pytree shaped like `event_shape` with any leading batch axes
        `[*batch]` on every leaf (the same on every leaf).

    Returns:
      `log_q`, shape `[*batch]`.
    """


class TargetLogProbFn(Protocol):

  def __call__(self, *args: Any, **kwargs: Any) -> Array:
    """Unnormalized log density of one draw (TFP's calling convention).

    Called as `f(*z)` when z is a tuple or list, `f(**z)` when z is a dict and
    `f(z)` when z is an array. Returns a scalar.
    """


class LossFn(Protocol):

  def __call__(self, target_log_prob_fn: TargetLogProbFn, surrogate: Any,
               params: Params, key: PRNGKey, sample_size: int) -> Array:
    """A variational loss: the scalar to minimize.

    Args:
      target_log_prob_fn: the unnormalized log density of one draw.
      surrogate: a `vi_jax.surrogates.Surrogate`.
      params: the surrogate's params.
      key: a PRNG key.
      sample_size: a Python int, the number of Monte Carlo draws.

    Returns:
      A scalar, the Monte Carlo estimate of the loss (e.g. -ELBO).
    """
