"""The non-finite guard: a step wrapper that accepts or rejects each update.

Like `optax.apply_if_finite`, it owns its counters (`VIState.num_nonfinite`,
`VIState.num_consecutive_nonfinite`): an update whose loss, gradient or
updated params are not finite is skipped (params, optimizer, model params and
criterion state kept; the key and the minibatch position advance). After
`max_consecutive_nonfinite` consecutive skips, or once the convergence
criterion has fired, the state is inactive and every later step leaves it as
it is (`is_active`), so a fixed-length scan can run past the stop.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax._src.types import Array
from vi_jax.stochastic.step import SEQUENTIAL_BYTES
from vi_jax.stochastic.step import StepFn
from vi_jax.stochastic.step import VIState

__all__ = [
    "all_finite",
    "data_note",
    "is_active",
    "nonfinite_rows",
    "skip_report",
    "with_nonfinite_guard",
]


def all_finite(*trees) -> Array:
  """shape=(), bool: every float entry of `trees` is finite."""
  parts = [jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(trees)
           if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
  if not parts:
    return jnp.ones((), bool)
  dtype = jnp.result_type(*parts)
  # 0 * x is 0 for finite x and NaN for inf or NaN, so one reduction checks
  # many leaves (XLA:CPU ran one small kernel per leaf's isfinite reduction);
  # one per group of leaves of at most SEQUENTIAL_BYTES, so that the check
  # adds no buffer that sends a small loop body to XLA:CPU's task graph.
  groups, size = [[]], 0
  for p in parts:
    nbytes = p.size * jnp.dtype(dtype).itemsize
    if groups[-1] and size + nbytes > SEQUENTIAL_BYTES:
      groups.append([])
      size = 0
    groups[-1].append(p.astype(dtype))
    size += nbytes
  return jnp.isfinite(sum(jnp.sum(jnp.concatenate(g) * 0) for g in groups))


def is_active(state: VIState, max_consecutive_nonfinite: Optional[int]) -> Array:
  """shape=(), bool: the loop is still running (not converged, not stopped)."""
  active = ~state.converged
  if max_consecutive_nonfinite is not None:
    active = active & (state.num_consecutive_nonfinite <
                       max_consecutive_nonfinite)
  return active


def _select(pred, new, old):
  """`new` if `pred` else `old` (pytrees): one conditional, not a select per
  leaf (XLA:CPU runs each select as its own small kernel: on an S = 1 fit of
  a 10-dim target the seven selects of Adam's state cost 8 % of the step)."""
  return jax.lax.cond(pred, lambda: new, lambda: old)


def with_nonfinite_guard(inner: StepFn, *, skip_nonfinite: bool,
                         max_consecutive_nonfinite: Optional[int],
                         gated: bool) -> StepFn:
  """Wraps `inner` so that inactive or non-finite updates leave the state.

  Args:
    inner: the step to guard (the core step, possibly with a criterion).
    skip_nonfinite: reject updates with a non-finite loss, gradient or
      updated params, and count them.
    max_consecutive_nonfinite: stop (become inactive) after this many
      consecutive rejections; None: never.
    gated: whether anything else can make the state inactive (a criterion).

  Returns:
    A `StepFn`; its quantities' `is_finite` says whether the update was
    finite, and `has_converged` is only True for an accepted update.
  """
  must_select = skip_nonfinite or gated or max_consecutive_nonfinite is not None

  def step(state, key, batch):
    proposed, info = inner(state, key, batch)
    active = is_active(state, max_consecutive_nonfinite)
    counters = {}
    if skip_nonfinite:
      finite = all_finite(info.loss, info.grads, info.model_grads,
                          proposed.params, proposed.model_params)
      ok = finite & active
      counters = dict(
          num_nonfinite=state.num_nonfinite + (active & ~finite).astype(jnp.int32),
          num_consecutive_nonfinite=jnp.where(
              active, jnp.where(finite, 0, state.num_consecutive_nonfinite + 1),
              state.num_consecutive_nonfinite).astype(jnp.int32))
      info = info._replace(is_finite=finite)
    else:
      ok = active
    if not must_select:
      return proposed._replace(**counters), info
    kept = ("params", "opt_state", "model_params", "criterion_state")
    selected = _select(ok, [getattr(proposed, f) for f in kept],
                       [getattr(state, f) for f in kept])
    fired = info.has_converged & ok
    return proposed._replace(
        **dict(zip(kept, selected)), converged=state.converged | fired,
        **counters), info._replace(has_converged=fired)

  return step


def nonfinite_rows(data) -> np.ndarray:
  """[N] bool (host): rows of `data` holding a non-finite value."""
  bad = 0
  for leaf in jax.tree_util.tree_leaves(data):
    x = np.asarray(leaf)
    if np.issubdtype(x.dtype, np.inexact):
      bad = bad | ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
  return np.asarray(bad, bool)


def data_note(data) -> str:
  if data is None:
    return ""
  rows = nonfinite_rows(data)
  if not rows.any():
    return " The data is finite."
  return (f" The data holds {int(rows.sum())} rows with non-finite values "
          f"(the first is row {int(np.argmax(rows))}): steps whose minibatch "
          "draws them see a non-finite loss.")


def skip_report(num_skipped, skipped, diverged, num_steps_taken,
                max_consecutive_nonfinite, data) -> str:
  """The host-side warning for skipped steps ('' when none were skipped).

  Args:
    num_skipped: shape=(), the fit's skipped-step count.
    skipped: [num_steps] bool, which steps were skipped.
    diverged: shape=(), bool: stopped on consecutive non-finite steps.
    num_steps_taken: shape=(), int.
    max_consecutive_nonfinite: the guard's setting.
    data: the data pytree, or None (then the message says whether it holds
      non-finite rows).
  """
  count = int(num_skipped)
  if not count:
    return ""
  first = int(np.argmax(np.asarray(skipped)))
  what = (f"{count} steps had a non-finite loss, gradient or updated params "
          f"and were skipped (the first at step {first} of this fit; "
          "FitResult.skipped marks them)")
  if bool(diverged):
    message = (f"vi.fit stopped at step {int(num_steps_taken)}: "
               f"{max_consecutive_nonfinite} consecutive steps had a "
               f"non-finite loss or gradient; in all {what}. The returned "
               "params are the last finite ones.")
  else:
    message = f"vi.fit: {what}; the returned params are finite."
  return message + data_note(data)
