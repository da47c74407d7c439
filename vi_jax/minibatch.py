"""Minibatch (stochastic) VI: a data pytree with N rows, B rows per step.

`vi.fit(target, ..., data=data, batch_size=B)` draws B rows per step and calls
the target as `target_log_prob_fn(batch, *z)` (after `model_params` when those
are learned too), where `batch = Batch(data=rows, scale=N / B)`: the target
scales its likelihood by `batch.scale` so the minibatch log density is an
unbiased estimate of the full one (Hoffman et al. 2013; PyMC's `total_size`,
NumPyro's `subsample_size`). `scaled_log_prob(log_prior_fn,
log_likelihood_fn)` builds such a target from the two parts.

Rows are drawn without replacement by epochs: the state keeps one permutation
of the row indices ([num_shards, N / num_shards] int32) and a position; each
step takes the next B / num_shards indices of every shard's permutation and
gathers those rows, and a fresh permutation is drawn (from that step's key)
when a shard's permutation is used up (the remainder of an epoch, fewer than
B / num_shards rows, is skipped for that epoch). Memory per step is the
O(N) int32 permutation, kept in the state, plus the gathered [B, ...] rows:
the full data is never copied; the permutation is re-drawn once per epoch, so
its O(N log N) cost is spread over N / B steps. With `num_shards = D`, row
indices stay within each of D contiguous blocks, so data laid out over D
devices along its leading axis (`vi_jax.sharding`) is gathered locally.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from vi_jax._types import Array, PRNGKey, PyTree
from vi_jax._validation import integer
from vi_jax._validation import positive_int

__all__ = ["Batch", "MinibatchState", "scaled_log_prob", "num_rows"]


class Batch(NamedTuple):
  """What the target receives: the rows of this step and the N/B scale."""
  data: PyTree  # the data pytree restricted to [B] rows (leading axis)
  scale: Array  # shape=(), N / B: multiply the likelihood by it


class MinibatchState(NamedTuple):
  permutation: Array  # [num_shards, N // num_shards], int32 row indices
  position: Array  # shape=(), int32, next unused slot of each permutation


def scaled_log_prob(log_prior_fn: Callable[..., Array],
                    log_likelihood_fn: Callable[..., Array]) -> Callable:
  """A minibatch target `f(batch, *z) = log p(z) + scale * log p(rows | z)`.

  Args:
    log_prior_fn: log prior of one draw, TFP's convention (`f(*z)`, `f(**z)`
      or `f(z)`).
    log_likelihood_fn: `(rows, *z) -> scalar`, the log likelihood SUMMED over
      the rows of a data pytree with leading [B] (same z convention).

  Returns:
    `(batch, *z) -> scalar` for `vi.fit(..., data=..., batch_size=...)`.
  """

  def target(batch, *args, **kwargs):
    return (log_prior_fn(*args, **kwargs) +
            batch.scale * log_likelihood_fn(batch.data, *args, **kwargs))

  return target


def num_rows(data: PyTree) -> int:
  """The common leading-axis length N of the data leaves.

  Raises:
    ValueError: no leaves, a scalar leaf, or leaves with different N.
  """
  leaves = jax.tree_util.tree_leaves(data)
  if not leaves:
    raise ValueError("data must be a pytree of arrays with a leading [N] axis; "
                     "it has no leaves.")
  sizes = {jnp.shape(l)[0] if jnp.ndim(l) else None for l in leaves}
  if None in sizes or len(sizes) != 1:
    raise ValueError("data leaves must share one leading [N] axis; got shapes "
                     f"{jax.tree_util.tree_map(jnp.shape, data)}.")
  return int(sizes.pop())


def check(data, batch_size, num_shards) -> tuple[int, int]:
  """Validates the minibatch settings; returns (N, B)."""
  n = num_rows(data)
  num_shards = positive_int("num_shards", num_shards)
  if n % num_shards:
    raise ValueError(f"data has N={n} rows, not divisible by num_shards="
                     f"{num_shards}.")
  if batch_size is None:
    return n, n
  batch_size = integer(f"batch_size (data has N={n} rows)", batch_size,
                       maximum=n)
  if batch_size % num_shards:
    raise ValueError(f"batch_size={batch_size} must be divisible by "
                     f"num_shards={num_shards}.")
  return n, batch_size


def init_state(n: int, num_shards: int) -> MinibatchState:
  """A state whose first `draw` draws a fresh permutation."""
  rows = n // num_shards
  return MinibatchState(
      permutation=jnp.broadcast_to(jnp.arange(rows, dtype=jnp.int32),
                                   (num_shards, rows)),
      position=jnp.asarray(rows, jnp.int32))


def draw(state: MinibatchState, key: PRNGKey, data: PyTree, batch_size: int,
         num_shards: int) -> tuple[Batch, MinibatchState]:
  """The next minibatch of `batch_size` rows, without replacement.

  Args:
    state: the `MinibatchState`.
    key: used only when a new epoch's permutation is drawn.
    data: pytree with leading [N].
    batch_size: B, a Python int.
    num_shards: D, a Python int dividing N and B.

  Returns:
    `(Batch(rows [B, ...], N / B), new_state)`.
  """
  n = num_rows(data)
  rows, per = n // num_shards, batch_size // num_shards
  scale = jnp.asarray(n / batch_size, jnp.result_type(float))
  if batch_size == n:
    return Batch(data, scale), state
  new_epoch = state.position + per > rows
  permutation = jax.lax.cond(
      new_epoch,
      lambda k: jax.vmap(lambda kk: jax.random.permutation(kk, rows).astype(
          jnp.int32))(jax.random.split(k, num_shards)),
      lambda k: state.permutation, key)
  position = jnp.where(new_epoch, 0, state.position)
  idx = jax.lax.dynamic_slice_in_dim(permutation, position, per, axis=1)

  def gather(x):
    if num_shards == 1:  # no reshape of the data at all
      return jnp.take(x, idx[0], axis=0)
    blocks = x.reshape((num_shards, rows) + x.shape[1:])
    got = jax.vmap(lambda b, i: jnp.take(b, i, axis=0))(blocks, idx)
    return got.reshape((batch_size,) + x.shape[1:])

  batch = jax.tree_util.tree_map(gather, data)
  return Batch(batch, scale), MinibatchState(permutation, position + per)


def spec(data: PyTree, batch_size: int) -> Any:
  """ShapeDtypeStructs of one `Batch` (for target checks)."""
  rows = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct((batch_size,) + jnp.shape(x)[1:],
                                     jnp.result_type(x)), data)
  return Batch(rows, jax.ShapeDtypeStruct((), jnp.result_type(float)))


def with_minibatch(inner, batch_size: int, num_shards: int):
  """Wraps a step (`vi_jax.step.StepFn`) so that it draws its own rows.

  The wrapped step is `(state, key, data) -> (state, quantities)`: it splits
  `key`, draws the next `batch_size` rows of `data` (owning
  `VIState.data_state`; the position advances even when the update is
  rejected) and calls `inner(state, key, Batch)`.
  """

  def step(state, key, data=None):
    if data is None:
      raise ValueError("this algorithm was built with data: pass "
                       "step(state, key, data).")
    key, batch_key = jax.random.split(key)
    batch, data_state = draw(state.data_state, batch_key, data, batch_size,
                             num_shards)
    proposed, info = inner(state, key, batch)
    return proposed._replace(data_state=data_state), info

  return step
