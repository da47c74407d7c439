"""Convergence criteria that run inside the compiled fit loop.

A criterion is a `ConvergenceCriterion(init, update)` NamedTuple of pure
functions over a state pytree, following TFP's
`tfp.optimizer.convergence_criteria.ConvergenceCriterion` protocol
(`bootstrap` / `one_step`) without the class:

    state = criterion.init(loss_0, grads_0, params_1)
    has_converged, state = criterion.update(step, loss_t, grads_t, params_t1,
                                            state)           # step t >= 1

`loss_t` and `grads_t` are evaluated at the params before update `t`;
`params_t1` are the params after it (tfp.math.minimize's order). When
`has_converged` is True at step `t`, `vi.fit` stops after that update: it took
`t + 1` updates and its trace has `t + 1` real rows (TFP's truncation rule).
Users can write their own criterion the same way; the state must be a pytree
of arrays whose shapes do not change from step to step.
"""

from typing import Any, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp

from vi_jax._src.types import Array, Params, PyTree
from vi_jax._src.validation import integer
from vi_jax._src.validation import positive_int
from vi_jax.stochastic.step import joint

__all__ = [
    "ConvergenceCriterion",
    "LossNotDecreasingState",
    "RelativeParamsChangeState",
    "RelativeLossChangeState",
    "loss_not_decreasing",
    "relative_params_change",
    "relative_loss_change",
]


class CriterionInitFn(Protocol):

  def __call__(self, loss: Array, grads: Params, params: Params) -> PyTree:
    """Builds the criterion state from step 0.

    Args:
      loss: shape=(), the loss at the initial params.
      grads: its gradient, structure of params.
      params: the params after the first update.

    Returns:
      The criterion state, a pytree of arrays.
    """


class CriterionUpdateFn(Protocol):

  def __call__(self, step: Array, loss: Array, grads: Params, params: Params,
               state: PyTree) -> tuple[Array, PyTree]:
    """Updates the state at step `step >= 1` and decides convergence.

    Args:
      step: shape=(), int32, the index of this step (>= 1).
      loss: shape=(), the loss at the params before this step's update.
      grads: its gradient.
      params: the params after this step's update.
      state: the previous criterion state.

    Returns:
      `(has_converged, state)`, `has_converged` a bool scalar.
    """


class ConvergenceCriterion(NamedTuple):
  """A stopping rule evaluated inside the compiled loop (pure functions)."""
  init: CriterionInitFn
  update: CriterionUpdateFn


def _check_min_num_steps(min_num_steps) -> int:
  return integer("min_num_steps", min_num_steps, minimum=0)


class LossNotDecreasingState(NamedTuple):
  previous_loss: Array  # shape=(), loss at the previous step
  average_decrease_in_loss: Array  # shape=(), moving average of loss[t-1]-loss[t]
  average_initial_decrease_in_loss: Array  # shape=(), its value at window_size


def loss_not_decreasing(atol: Optional[float] = None,
                        rtol: Optional[float] = None, window_size: int = 10,
                        min_num_steps: int = 20) -> ConvergenceCriterion:
  """Stops when a moving average of the per-step loss decrease is small.

  decrease[t] = loss[t-1] - loss[t];
  avg[t] = decrease[t] + (1 - 1/window_size) (avg[t-1] - decrease[t]);
  converged when `avg[t] < max(atol, rtol * avg[window_size])` and
  `t >= min_num_steps`. Exactly TFP's semantics.

  Args:
    atol: absolute threshold on the averaged decrease, or None.
    rtol: threshold relative to the averaged decrease over the first
      `window_size` steps, or None. At least one of atol/rtol is required.
    window_size: effective window (Python int >= 1) of the moving average.
    min_num_steps: no convergence before this step index.

  Returns:
    A `ConvergenceCriterion` with `LossNotDecreasingState`.

  Raises:
    ValueError: neither `atol` nor `rtol` given, or a bad window/min steps.

  References:
    tfp.optimizer.convergence_criteria.LossNotDecreasing.
  """
  if atol is None and rtol is None:
    raise ValueError("loss_not_decreasing needs at least one of atol and rtol.")
  window_size = positive_int("window_size", window_size)
  min_num_steps = _check_min_num_steps(min_num_steps)

  def init(loss, grads, params):
    del grads, params
    zero = jnp.zeros_like(loss)
    return LossNotDecreasingState(loss, zero, zero)

  def update(step, loss, grads, params, state):
    del grads, params
    dtype = loss.dtype
    a = jnp.asarray(0. if atol is None else atol, dtype)
    r = jnp.asarray(0. if rtol is None else rtol, dtype)
    decay = 1. - 1. / jnp.asarray(window_size, dtype)
    decrease = state.previous_loss - loss
    avg = decrease + decay * (state.average_decrease_in_loss - decrease)
    converged = avg < jnp.maximum(a, r * state.average_initial_decrease_in_loss)
    converged = converged & (step >= min_num_steps)
    initial = jnp.where(step <= window_size, avg,
                        state.average_initial_decrease_in_loss)
    return converged, LossNotDecreasingState(loss, avg, initial)

  return ConvergenceCriterion(init, update)


class RelativeParamsChangeState(NamedTuple):
  previous_params: Params  # params after the previous update


def _global_norm(tree) -> Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(l)) for l in leaves))


def relative_params_change(rtol: float = 1e-4, atol: float = 0.,
                           min_num_steps: int = 20) -> ConvergenceCriterion:
  """Stops when one update moves the params little relative to their size.

  Converged at step t when
  `||theta_t - theta_{t-1}|| <= atol + rtol * ||theta_{t-1}||` (global L2 norms
  over the params pytree) and `t >= min_num_steps`. With a stochastic loss this
  fires once the step size has decayed (a schedule) or the gradient noise is
  small; it is the `tol_rel_param`-style rule of L-BFGS-type optimizers.

  Args:
    rtol: relative tolerance (>= 0).
    atol: absolute tolerance (>= 0).
    min_num_steps: no convergence before this step index.

  Returns:
    A `ConvergenceCriterion` with `RelativeParamsChangeState`.
  """
  if rtol < 0 or atol < 0:
    raise ValueError(f"rtol and atol must be >= 0; got {rtol}, {atol}.")
  min_num_steps = _check_min_num_steps(min_num_steps)

  def init(loss, grads, params):
    del loss, grads
    return RelativeParamsChangeState(params)

  def update(step, loss, grads, params, state):
    del loss, grads
    change = _global_norm(jax.tree_util.tree_map(
        lambda a, b: a - b, params, state.previous_params))
    size = _global_norm(state.previous_params)
    converged = (change <= atol + rtol * size) & (step >= min_num_steps)
    return converged, RelativeParamsChangeState(params)

  return ConvergenceCriterion(init, update)


class RelativeLossChangeState(NamedTuple):
  window_sum: Array  # shape=(), sum of losses in the current window
  window_count: Array  # shape=(), int32, losses in the current window
  previous_mean: Array  # shape=(), mean loss of the last full window
  num_windows: Array  # shape=(), int32, full windows seen
  buffer: Array  # [buffer_size], relative changes (circular)
  num_filled: Array  # shape=(), int32, valid entries in buffer


def relative_loss_change(tol_rel_obj: float = 0.01, eval_every: int = 100,
                         buffer_size: int = 10,
                         min_num_steps: int = 0) -> ConvergenceCriterion:
  """Stan ADVI's rule: mean or median relative objective change below tol.

  Every `eval_every` steps the objective is estimated (here: the mean of the
  per-step losses over those `eval_every` steps, i.e. `eval_every *
  sample_size` draws; Stan draws `elbo_samples` fresh ones), the relative
  change `|(prev - cur) / cur|` is pushed into a circular buffer of
  `buffer_size` entries, and the fit stops as soon as the mean OR the median of
  the buffer is below `tol_rel_obj`. Stan sizes the buffer as
  `max(0.1 * max_iterations / eval_elbo, 2)`: 10 with its defaults
  (10000 iterations, eval_elbo=100). The first window's mean plays Stan's
  `elbo_init`. The ratio is invariant to the sign, so -ELBO works as the ELBO.

  Args:
    tol_rel_obj: relative tolerance (Stan's `tol_rel_obj`, default 0.01).
    eval_every: steps per objective evaluation (Stan's `eval_elbo`).
    buffer_size: circular buffer length (>= 1).
    min_num_steps: no convergence before this step index.

  Returns:
    A `ConvergenceCriterion` with `RelativeLossChangeState`.

  References:
    Kucukelbir et al. 2017 (ADVI), sec. 3.5; Stan's
    stan/variational/advi.hpp (`stochastic_gradient_ascent`, `circ_buff_median`).
  """
  eval_every = positive_int("eval_every", eval_every)
  buffer_size = positive_int("buffer_size", buffer_size)
  if tol_rel_obj <= 0:
    raise ValueError(f"tol_rel_obj must be > 0; got {tol_rel_obj}.")
  min_num_steps = _check_min_num_steps(min_num_steps)

  def init(loss, grads, params):
    del grads, params
    return RelativeLossChangeState(
        window_sum=loss, window_count=jnp.ones((), jnp.int32),
        previous_mean=jnp.zeros_like(loss),
        num_windows=jnp.zeros((), jnp.int32),
        buffer=jnp.zeros((buffer_size,), loss.dtype),
        num_filled=jnp.zeros((), jnp.int32))

  def update(step, loss, grads, params, state):
    del grads, params
    total = state.window_sum + loss
    count = state.window_count + 1
    full = count == eval_every
    mean = total / eval_every
    push = full & (state.num_windows >= 1)
    rel = jnp.abs((state.previous_mean - mean) / mean)
    slot = (state.num_windows - 1) % buffer_size
    buffer = jnp.where(push, state.buffer.at[slot].set(rel), state.buffer)
    filled = jnp.minimum(state.num_filled + push.astype(jnp.int32), buffer_size)
    valid = jnp.arange(buffer_size) < filled
    buf_mean = jnp.sum(jnp.where(valid, buffer, 0.)) / jnp.maximum(filled, 1)
    ordered = jnp.sort(jnp.where(valid, buffer, jnp.inf))
    median = ordered[filled // 2]  # Stan: nth_element at size / 2
    converged = push & ((buf_mean < tol_rel_obj) | (median < tol_rel_obj))
    converged = converged & (step >= min_num_steps)
    new = RelativeLossChangeState(
        window_sum=jnp.where(full, jnp.zeros_like(total), total),
        window_count=jnp.where(full, 0, count).astype(jnp.int32),
        previous_mean=jnp.where(full, mean, state.previous_mean),
        num_windows=state.num_windows + full.astype(jnp.int32),
        buffer=buffer, num_filled=filled)
    return converged, new

  return ConvergenceCriterion(init, update)


def check_criterion(criterion: Any) -> None:
  """Raises TypeError unless `criterion` has callable `init` and `update`."""
  if not (callable(getattr(criterion, "init", None)) and
          callable(getattr(criterion, "update", None))):
    raise TypeError(
        "convergence_criterion must be a vi_jax.stochastic.convergence.ConvergenceCriterion"
        f" (init, update); got {type(criterion).__name__}.")


def with_criterion(inner, criterion: ConvergenceCriterion,
                   learn_model_params: bool):
  """Wraps a step (`vi_jax.stochastic.step.StepFn`) with a stopping rule.

  The criterion owns `VIState.criterion_state`; step 0 initializes it
  (`criterion.init`), later steps update it. The proposed state's `converged`
  and the quantities' `has_converged` say whether it fired at this step;
  `vi_jax.stochastic.guards.with_nonfinite_guard` keeps it only for accepted updates.

  Args:
    inner: the step to wrap.
    criterion: a `ConvergenceCriterion`.
    learn_model_params: the criterion sees `(params, model_params)` and their
      gradients when model params are learned (what the optimizer updates).

  Returns:
    A `StepFn`.
  """
  def step(state, key, batch):
    proposed, info = inner(state, key, batch)
    grads = joint(info.grads, info.model_grads, learn_model_params)
    new = joint(proposed.params, proposed.model_params, learn_model_params)
    first = state.step == 0
    c_init = criterion.init(info.loss, grads, new)
    fired, c_next = criterion.update(state.step, info.loss, grads, new,
                                     state.criterion_state)
    c_next = jax.tree_util.tree_map(lambda a, b: jnp.where(first, a, b),
                                    c_init, c_next)
    fired = jnp.asarray(fired, bool) & ~first
    return (proposed._replace(criterion_state=c_next),
            info._replace(has_converged=fired))

  return step


def criterion_state_spec(criterion: ConvergenceCriterion, loss, trainable):
  """Zeros shaped like the criterion's state for a loss and params spec."""
  spec = jax.eval_shape(criterion.init, loss, trainable, trainable)
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), spec)
