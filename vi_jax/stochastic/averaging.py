"""Polyak-Ruppert averaging of the iterates, as an optax wrapper.

`tail_averaged(optimizer, start)` keeps the uniform average of the params
after update `start`; `averaged_params(opt_state)` reads it. Step 5 of the
convergence recipe in `vi_jax.stochastic.minibatch`: SGD with a constant
learning rate, decayed linearly to 0 over the second half, and the average
of the params over the last epoch (Polyak & Juditsky 1992; Ruppert 1988).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vi_jax._src.types import Array, PyTree
from vi_jax._src import validation as vv
from vi_jax._src.validation import integer

__all__ = ["TailAverageState", "averaged_params", "tail_averaged"]


class TailAverageState(NamedTuple):
  inner: Any  # the wrapped optimizer's state
  count: Array  # shape=(), int32, updates applied so far
  average: PyTree  # like params: mean of the params after updates start+1..


def tail_averaged(optimizer: optax.GradientTransformation,
                  start: int) -> optax.GradientTransformationExtraArgs:
  """`optimizer`, also keeping the Polyak-Ruppert average of the iterates.

  The state's `average` tracks the params until `start` updates have been
  applied, then is the uniform average of the params after updates
  `start + 1, ..., t` (`optax.incremental_update` with step 1 / k): with
  `start = num_steps - tail`, the mean of the last `tail` iterates of a fit.
  The updates are the optimizer's own. Read it with `averaged_params`.

  Args:
    optimizer: an optax `GradientTransformation`.
    start: Python int >= 0, updates before the averaging starts.

  Returns:
    An `optax.GradientTransformationExtraArgs`; its `update` needs `params`.

  Raises:
    TypeError: `optimizer` is not a GradientTransformation, `start` not an
      integer.
    ValueError: `start` < 0.

  References:
    Polyak & Juditsky (1992), "Acceleration of stochastic approximation by
    averaging"; Ruppert (1988).
  """
  vv.optimizer(optimizer)
  start = integer("start", start, minimum=0)

  def init_fn(params):
    return TailAverageState(optimizer.init(params), jnp.zeros((), jnp.int32),
                            params)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("tail_averaged's update needs params.")
    updates, inner = optax.with_extra_args_support(optimizer).update(
        updates, state.inner, params, **extra_args)
    seen = state.count - start  # averaged iterates before this one, if >= 0
    weight = jnp.where(seen >= 0, 1. / (jnp.maximum(seen, 0) + 1.), 1.)
    average = jax.tree_util.tree_map(
        lambda new, old: optax.incremental_update(
            new, old, weight.astype(jnp.result_type(old))),
        optax.apply_updates(params, updates), state.average)
    return updates, TailAverageState(inner, state.count + 1, average)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def averaged_params(opt_state: Any) -> PyTree:
  """The `average` of the `tail_averaged` state inside `opt_state`.

  Raises:
    ValueError: `opt_state` holds no (or several) `TailAverageState`.
  """
  found = [s for s in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, TailAverageState))
           if isinstance(s, TailAverageState)]
  if len(found) != 1:
    raise ValueError("opt_state must hold one vi.minibatch.tail_averaged "
                     f"state; found {len(found)}.")
  return found[0].average
