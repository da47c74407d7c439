"""Independent restarts: R fits in one compile with `jax.vmap` over keys.

The one-liner (fit composes with vmap; the loop is one XLA program):

    results = jax.vmap(lambda k: vi.fit(log_p, q, opt, 2000, key=k))(
        jax.random.split(key, 8))        # every leaf gains a leading [8]

`fit_restarts` does that and picks the run with the lowest final loss.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from vi_jax._src.types import Array, PRNGKey
from vi_jax.stochastic.svi import FitResult
from vi_jax.stochastic.svi import fit
from vi_jax._src.validation import integer
from vi_jax._src.validation import positive_int

__all__ = ["RestartsResult", "fit_restarts"]


class RestartsResult(NamedTuple):
  """What `fit_restarts` returns."""
  best: FitResult  # the run with the lowest final loss (no leading axis)
  best_index: Array  # shape=(), int32
  final_losses: Array  # [num_restarts], the selection score of each run
  all: FitResult  # every run, each leaf with a leading [num_restarts]


def fit_restarts(target_log_prob_fn, surrogate, optimizer, num_steps: int, *,
                 key: PRNGKey, num_restarts: int, final_window: int = 1,
                 **fit_kwargs: Any) -> RestartsResult:
  """Runs `num_restarts` independent fits in one compile; returns the best.

  Each run gets `jax.random.split(key, num_restarts)[r]` (its own init and
  draws); `fit` is vmapped over those keys. The score of a run is the mean of
  its last `final_window` real losses (the trace must be the loss, i.e. the
  default `trace_fn`); non-finite scores never win. Progress bars are off.

  Args:
    target_log_prob_fn, surrogate, optimizer, num_steps: as for `vi.fit`.
    key: one PRNG key.
    num_restarts: R, a Python int >= 1.
    final_window: losses averaged for the score (>= 1; larger is less noisy).
    **fit_kwargs: passed to `vi.fit` (sample_size, loss, model_params, data,
      convergence_criterion, ...); `trace_fn` and `progress_bar` are not
      accepted.

  Returns:
    `RestartsResult(best, best_index, final_losses, all)`.

  Raises:
    ValueError: bad `num_restarts` / `final_window`, or an unsupported kwarg.
  """
  num_restarts = positive_int("num_restarts", num_restarts)
  final_window = integer("final_window", final_window, maximum=num_steps)
  for bad in ("trace_fn", "progress_bar"):
    if bad in fit_kwargs:
      raise ValueError(f"fit_restarts does not accept {bad}.")

  def one(k):
    return fit(target_log_prob_fn, surrogate, optimizer, num_steps, key=k,
               progress_bar=False, **fit_kwargs)

  runs = jax.jit(jax.vmap(one))(jax.random.split(key, num_restarts))
  steps = jnp.arange(num_steps)

  def score(trace, taken):
    w = (steps < taken) & (steps >= taken - final_window)
    return jnp.sum(jnp.where(w, trace, 0.)) / jnp.maximum(jnp.sum(w), 1)

  finals = jax.vmap(score)(runs.trace, runs.num_steps_taken)
  finals = jnp.where(jnp.isfinite(finals) & (runs.num_steps_taken > 0),
                     finals, jnp.inf)
  best = jnp.argmin(finals).astype(jnp.int32)
  return RestartsResult(
      best=jax.tree_util.tree_map(lambda x: x[best], runs), best_index=best,
      final_losses=finals, all=runs)
