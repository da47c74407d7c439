"""The compiled fit loop: scan or while loop, chunks, trace padding.

`run` steps a composed `StepFn` (`vi_jax.stochastic.step`) over precomputed keys. Without
a stopping rule it is a `jax.lax.scan` (reverse-differentiable) over chunks of
at most 64 steps (fewer when a trace row is wider than 8 bytes), each an inner
`lax.scan` of the step, with the progress bar checked between chunks; a state
that stops early (non-finite updates) is left unchanged by the remaining steps
(`vi_jax.stochastic.guards.is_active`). With a convergence criterion it is a
`jax.lax.while_loop` that stops after the step at which the criterion fires.
Either way the trace has `num_steps` rows, the first `num_steps_taken` real
and the rest repeating the last real row (TFP's padding), and `skipped` marks
the steps whose update was rejected.

Why chunks: XLA:CPU runs a loop body's thunks one after another only when
every buffer slice they use is at most 512 bytes
(`vi_jax.stochastic.step.SEQUENTIAL_BYTES`); otherwise it runs the body with its
task-graph executor, which on a small target costs more than the step itself.
A scan over more than 64 steps has [num_steps, 2] keys and [num_steps] trace
rows over that size; a chunk's inner scan does not. What the chunks gain per
step and cost in compile time is measured in benchmarks/RESULTS.md ("Design
measurements cited in the code", `benchmarks.step_ablation`).
"""

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax._src.types import Array, PyTree
from vi_jax.stochastic.guards import is_active
from vi_jax.stochastic.step import SEQUENTIAL_BYTES
from vi_jax.stochastic.step import TraceableQuantities
from vi_jax.stochastic.step import VIState

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


# A chunk's [chunk, 2] keys and [chunk] trace rows are buffers of its inner
# loop, kept under this (the module docstring says why), so a chunk is at most
# 64 steps (benchmarks/RESULTS.md, "Design measurements cited in the code").
# A module constant so that `benchmarks.step_ablation` can lift it.
_SEQUENTIAL_BYTES = SEQUENTIAL_BYTES


def _chunk_length(num_steps: int, every: Optional[int], limit: int) -> int:
  """Steps per chunk: at most `limit`, dividing `every` (the bar's update
  granularity) when given, and `num_steps` (no remainder) when that leaves
  chunks of at least 8 steps (or of `limit`)."""
  spans = (num_steps,) if every is None else (math.gcd(num_steps, every),
                                               every)
  for span in spans:
    k = max(d for d in range(1, min(span, limit) + 1) if span % d == 0)
    if k >= min(span, limit, 8):
      return k
  return limit if every is None else every


def _step_bytes(spec, loss0, keys) -> int:
  """The widest per-step entry of the scan's inputs and outputs, in bytes."""
  leaves = jax.tree_util.tree_leaves((spec, loss0, jax.eval_shape(
      jax.random.key_data, keys[0])))
  return max(int(np.prod(l.shape, dtype=np.int64)) * jnp.dtype(l.dtype).itemsize
             for l in leaves)


def _chunked(chunk, state, keys, length, reporter, loss_of):
  """`chunk(state, keys) -> (state, rows)` over consecutive chunks of `length`
  keys (an outer `lax.scan` when there are several), then over the remaining
  keys; a bar check after each chunk when a reporter is given."""
  num_steps = keys.shape[0]
  n_chunks = num_steps // length
  head = n_chunks * length
  parts = []
  if n_chunks == 1 and reporter is None:
    state, rows = chunk(state, keys[:head])
    parts.append(rows)
  elif n_chunks:

    def outer(carry, chunk_keys):
      state, end, next_report = carry
      state, rows = chunk(state, chunk_keys)
      if reporter is not None:
        next_report = reporter.maybe_report(end, loss_of(rows)[-1],
                                            next_report)
      return (state, end + length, next_report), rows

    start = (jnp.asarray(length, jnp.int32),
             jnp.asarray(reporter.every if reporter else 0, jnp.int32))
    (state, _, _), rows = jax.lax.scan(
        outer, (state,) + start,
        keys[:head].reshape((n_chunks, length) + keys.shape[1:]))
    parts.append(jax.tree_util.tree_map(
        lambda y: y.reshape((head,) + y.shape[2:]), rows))
  if head < num_steps:
    state, rows = chunk(state, keys[head:])
    parts.append(rows)
  rows = parts[0] if len(parts) == 1 else jax.tree_util.tree_map(
      lambda *a: jnp.concatenate(a), *parts)
  return state, rows


def _scan_loop(step, state, keys, data, trace_fn, trace_is_loss, reporter,
               max_nonfinite, length):

  def body(state, key):
    active = is_active(state, max_nonfinite)
    state, info = step(state, key, data)
    return state, _Row(trace_fn(info), active, active & ~info.is_finite,
                       None if trace_is_loss else info.loss)

  loss_of = lambda row: row.trace if row.loss is None else row.loss
  state, rows = _chunked(lambda state, keys: jax.lax.scan(body, state, keys),
                         state, keys, length, reporter, loss_of)
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
    reporter: a `vi_jax.stochastic.progress.Reporter`, or None.
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
    length = _chunk_length(
        num_steps, None if reporter is None else reporter.every,
        max(1, _SEQUENTIAL_BYTES // _step_bytes(spec, loss0, keys)))
    return _scan_loop(step, state, keys, data, trace_fn, trace_is_loss,
                      reporter, max_nonfinite, length)

  def skip(state):
    return (state, _zeros(spec, num_steps), jnp.zeros((), jnp.int32), loss0,
            jnp.zeros((num_steps,), bool))

  if ok0 is None:
    state, trace, taken, last, skipped = loop(state)
  else:
    state, trace, taken, last, skipped = jax.lax.cond(ok0, loop, skip, state)
  trace, mask = pad(trace, taken)
  return LoopResult(state, trace, taken, last, skipped, mask)
