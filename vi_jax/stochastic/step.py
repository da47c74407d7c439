"""One VI step: the loop state, what a step exposes, and the core gradient step.

A step is a pure function `(state, key, batch) -> (state, TraceableQuantities)`
(the `StepFn` Protocol). The core step below evaluates the loss and its
gradient and applies one optax update; cross-cutting behaviour is added by
wrappers that own their slice of `VIState`, as optax's `apply_if_finite` owns
its counters:

- `vi_jax.stochastic.minibatch.with_minibatch`: draws the step's rows (`data_state`);
- `vi_jax.stochastic.convergence.with_criterion`: the stopping rule (`criterion_state`,
  `converged`);
- `vi_jax.stochastic.guards.with_nonfinite_guard`: accepts or rejects the proposed state
  (`num_nonfinite`, `num_consecutive_nonfinite`).

`vi_jax.stochastic.svi.build` composes them; `vi_jax.stochastic.loop` runs the result.
"""

from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vi_jax._src.types import Array, Params, PRNGKey, PyTree

__all__ = ["StepFn", "TraceableQuantities", "VIState", "core_step"]

# XLA:CPU runs a loop body's thunks one after another, without its task-graph
# executor, when every buffer slice they use is at most this many bytes
# (`ThunkExecutorOptions.execute_sequential_buffer_threshold`, in
# xla/backends/cpu/runtime/thunk_executor.h). On a small target the task
# graph costs more than the step, so the loop (`vi_jax.stochastic.loop`) and the guard
# (`vi_jax.stochastic.guards`) keep their own buffers under it.
SEQUENTIAL_BYTES = 512


class VIState(NamedTuple):
  """The whole loop state (a pytree of arrays; checkpointable, resumable).

  `step` counts loop iterations (skipped non-finite ones included), so the
  key of iteration `step` is `fold_in(loop_key, step)` whatever the split of a
  run into pieces.
  """
  params: Params  # surrogate params pytree
  opt_state: optax.OptState
  step: Array  # shape=(), int32: number of iterations taken
  model_params: PyTree = ()  # learned model params (or ())
  data_state: PyTree = ()  # vi_jax.stochastic.minibatch.MinibatchState (or ())
  criterion_state: PyTree = ()  # the convergence criterion's state (or ())
  converged: Array = np.bool_(False)  # shape=(), bool: the criterion fired
  num_nonfinite: Array = np.int32(0)  # shape=(), int32: skipped steps
  num_consecutive_nonfinite: Array = np.int32(0)  # shape=(), int32


class TraceableQuantities(NamedTuple):
  """What one step exposes to `trace_fn` (tfp.math.minimize's convention)."""
  loss: Array  # shape=(), the loss evaluated at `params` (e.g. -ELBO)
  params: Params  # the params at which loss and grads were evaluated
  grads: Params  # d loss / d params, same structure as params
  step: Array  # shape=(), int32: index of this step
  model_params: PyTree = ()  # model params at which loss was evaluated
  model_grads: PyTree = ()  # d loss / d model_params
  is_finite: Array = np.bool_(True)  # shape=(), bool: loss and grads finite
  has_converged: Array = np.bool_(False)  # shape=(), bool: criterion fired


class StepFn(Protocol):

  def __call__(self, state: VIState, key: PRNGKey,
               batch: Any) -> tuple[VIState, TraceableQuantities]:
    """Proposes the next state.

    Args:
      state: the current `VIState`.
      key: this step's PRNG key.
      batch: the step's `vi_jax.stochastic.minibatch.Batch`, or None without data.

    Returns:
      `(proposed_state, quantities)`, the quantities evaluated at `state`.
    """


def joint(params: Params, model_params: PyTree, learn_model_params: bool):
  """What the optimizer updates: `(params, model_params)` or `params`."""
  return (params, model_params) if learn_model_params else params


def core_step(objective: Callable[[Any, PRNGKey, Any], Array],
              optimizer: optax.GradientTransformation,
              learn_model_params: bool) -> StepFn:
  """The bare gradient step: loss and gradient, then one optax update.

  Args:
    objective: `(trainable, key, batch) -> loss`, trainable as in `joint`.
    optimizer: an optax `GradientTransformation`, closed over.
    learn_model_params: whether the optimizer also updates the model params.

  Returns:
    A `StepFn` that always accepts its update and advances `step`.
  """
  value_and_grad = jax.value_and_grad(objective)

  def step(state, key, batch):
    trainable = joint(state.params, state.model_params, learn_model_params)
    value, grads = value_and_grad(trainable, key, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    new = optax.apply_updates(trainable, updates)
    params, mp = new if learn_model_params else (new, ())
    g, mg = grads if learn_model_params else (grads, ())
    info = TraceableQuantities(
        loss=value, params=state.params, grads=g, step=state.step,
        model_params=state.model_params, model_grads=mg,
        is_finite=jnp.ones((), bool), has_converged=jnp.zeros((), bool))
    return state._replace(params=params, opt_state=opt_state, model_params=mp,
                          step=state.step + 1), info

  return step
