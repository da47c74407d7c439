"""The compiled fit loop: scan or while loop, progress chunks, trace padding.

`run` steps a composed `StepFn` (`vi_jax.step`) over precomputed keys. Without
a stopping rule it is one `jax.lax.scan` (reverse-differentiable), in chunks
of `reporter.every` steps when a progress bar is on (a nested scan, so no
per-step cost); a state that stops early (non-finite updates) is left
unchanged by the remaining steps (`vi_jax.guards.is_active`). With a
convergence criterion it is a `jax.lax.while_loop` that stops after the step
at which the criterion fires. Either way the trace has `num_steps` rows, the
first `num_steps_taken` real and the rest repeating the last real row (TFP's
padding), and `skipped` marks the steps whose update was rejected.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from vi_jax._types import Array, PyTree
from vi_jax.guards import is_active
from vi_jax.step import TraceableQuantities
from vi_jax.step import VIState

__all__ = ["LoopResult", "run"]


class LoopResult(NamedTuple):
  state: VIState  # the final loop state
  trace: PyTree  # trace_fn outputs, leading [num_steps], padded
  num_steps_taken: Array  # shape=(), int32: steps run while active
  last_loss: Array  # shape=(), the loss of the last step taken
  skipped: Array  # [num_steps], bool: steps whose update was rejected
  mask: Array  # [num_steps], bool: real rows of trace


class _Row(NamedTuple):
  trace: PyTree  # trace_fn's output
  active: Array  # shape=(), bool: the step ran on an active state
  skipped: Array  # shape=(), bool: the update was rejected
  loss: Optional[Array]  # shape=(), or None when the trace is the loss


def _trace_spec(trace_fn, state: VIState, loss: Array):
  """trace_fn's output structure from stand-in quantities (gradients have the
  params' shapes); dead code in the compiled program."""
  ok = jnp.ones((), bool)
  fake = TraceableQuantities(
      loss=loss, params=state.params, grads=state.params, step=state.step,
      model_params=state.model_params, model_grads=state.model_params,
      is_finite=ok, has_converged=ok)
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)),
      trace_fn(fake))


def _scan(body, state, xs, reporter, loss_of):
  """`lax.scan(body, state, xs)`, in chunks of `reporter.every` steps with a
  bar update between chunks when a reporter is given."""
  if reporter is None:
    return jax.lax.scan(body, state, xs)
  num_steps, every = xs[0].shape[0], reporter.every
  n_chunks, head = num_steps // every, num_steps // every * every
  parts = []
  if n_chunks:

    def chunk(carry, chunk_xs):
      state, next_report = carry
      state, ys = jax.lax.scan(body, state, chunk_xs)
      next_report = reporter.maybe_report(chunk_xs[0][-1] + 1,
                                          loss_of(ys)[-1], next_report)
      return (state, next_report), ys

    (state, _), ys = jax.lax.scan(
        chunk, (state, jnp.asarray(every, jnp.int32)),
        jax.tree_util.tree_map(
            lambda x: x[:head].reshape((n_chunks, every) + x.shape[1:]), xs))
    parts.append(jax.tree_util.tree_map(
        lambda y: y.reshape((head,) + y.shape[2:]), ys))
  if head < num_steps:
    state, ys = jax.lax.scan(body, state,
                             jax.tree_util.tree_map(lambda x: x[head:], xs))
    parts.append(ys)
  ys = parts[0] if len(parts) == 1 else jax.tree_util.tree_map(
      lambda *a: jnp.concatenate(a), *parts)
  return state, ys


def _scan_loop(step, state, keys, data, trace_fn, trace_is_loss, reporter,
               max_nonfinite):
  num_steps = keys.shape[0]

  def body(state, i_key):
    active = is_active(state, max_nonfinite)
    state, info = step(state, i_key[1], data)
    return state, _Row(trace_fn(info), active, active & ~info.is_finite,
                       None if trace_is_loss else info.loss)

  loss_of = lambda row: row.trace if row.loss is None else row.loss
  state, rows = _scan(body, state, (jnp.arange(num_steps, dtype=jnp.int32),
                                    keys), reporter, loss_of)
  taken = jnp.sum(rows.active.astype(jnp.int32)).astype(jnp.int32)
  last = loss_of(rows)[jnp.maximum(taken - 1, 0)]
  return state, rows.trace, taken, last, rows.skipped


def _while_loop(step, state, keys, data, trace_fn, reporter, max_nonfinite,
                loss0, spec):
  num_steps = keys.shape[0]

  def cond(carry):
    state, i = carry[0], carry[3]
    return (i < num_steps) & is_active(state, max_nonfinite)

  def body(carry):
    state, trace, skipped, i, _, next_report = carry
    state, info = step(state, keys[i], data)
    if reporter is not None:
      next_report = reporter.maybe_report(i + 1, info.loss, next_report)
    trace = jax.tree_util.tree_map(
        lambda buf, v: jax.lax.dynamic_update_index_in_dim(
            buf, v.astype(buf.dtype), i, 0), trace, trace_fn(info))
    skipped = skipped.at[i].set(~info.is_finite)
    return (state, trace, skipped, i + 1, info.loss.astype(loss0.dtype),
            next_report)

  first = reporter.every if reporter is not None else 0
  state, trace, skipped, taken, last, _ = jax.lax.while_loop(
      cond, body, (state, _zeros(spec, num_steps),
                   jnp.zeros((num_steps,), bool), jnp.zeros((), jnp.int32),
                   loss0, jnp.asarray(first, jnp.int32)))
  return state, trace, taken, last, skipped


def _zeros(spec, num_steps):
  return jax.tree_util.tree_map(
      lambda s: jnp.zeros((num_steps,) + s.shape, s.dtype), spec)


def pad(trace: PyTree, taken: Array) -> tuple[PyTree, Array]:
  """`(trace, mask)`: rows from `taken` on repeat the last real row."""
  num_steps = jax.tree_util.tree_leaves(trace)[0].shape[0]
  mask = jnp.arange(num_steps) < taken
  trace = jax.tree_util.tree_map(
      lambda t: jnp.where(mask.reshape((-1,) + (1,) * (t.ndim - 1)), t,
                          t[jnp.maximum(taken - 1, 0)]), trace)
  return trace, mask


def run(step: Callable, state: VIState, keys: Array, data: Any, *,
        trace_fn: Callable, trace_is_loss: bool, reporter: Any,
        stops_early: bool, max_nonfinite: Optional[int], loss0: Array,
        ok0: Optional[Array] = None) -> LoopResult:
  """Runs `step` over `keys` ([num_steps] keys) from `state`.

  Args:
    step: `(state, key, data) -> (state, TraceableQuantities)`.
    state: the initial `VIState`.
    keys: [num_steps] PRNG keys, one per iteration.
    data: the full data pytree, or None.
    trace_fn: `TraceableQuantities -> pytree`, recorded per step.
    trace_is_loss: trace_fn returns the loss (no second loss buffer).
    reporter: a `vi_jax.progress.Reporter`, or None.
    stops_early: a criterion can stop the loop (a while loop).
    max_nonfinite: the guard's `max_consecutive_nonfinite`.
    loss0: shape=(), a loss of the right dtype (the initial loss when known).
    ok0: shape=(), bool, or None: when given, the loop runs only if it is
      True (`lax.cond`; else zero steps are taken).

  Returns:
    A `LoopResult`.
  """
  num_steps = keys.shape[0]
  spec = _trace_spec(trace_fn, state, loss0)

  def loop(state):
    if stops_early:
      return _while_loop(step, state, keys, data, trace_fn, reporter,
                         max_nonfinite, loss0, spec)
    return _scan_loop(step, state, keys, data, trace_fn, trace_is_loss,
                      reporter, max_nonfinite)

  def skip(state):
    return (state, _zeros(spec, num_steps), jnp.zeros((), jnp.int32), loss0,
            jnp.zeros((num_steps,), bool))

  if ok0 is None:
    state, trace, taken, last, skipped = loop(state)
  else:
    state, trace, taken, last, skipped = jax.lax.cond(ok0, loop, skip, state)
  trace, mask = pad(trace, taken)
  return LoopResult(state, trace, taken, last, skipped, mask)
