"""Wall-clock budgets: a deadline on the host, and a check of it inside
compiled loops.

A deadline is a Python float, seconds on this process's monotonic clock since
`EPOCH` (`math.inf` for none). The host checks it between programs
(`seconds_left`); a compiled loop checks it between iterations (`expired`), so
that one long solve (an L-BFGS run on many fixed draws, a flow's Adam steps)
ends with what it has when the time is spent. The deadline is an argument of
the program, not a constant in it, so one compiled program serves every
budget.
"""

import math
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from vi_jax._src.types import Array

__all__ = ["CHECK_EVERY", "EPOCH", "deadline", "expired", "seconds_left"]

EPOCH = time.monotonic()
# A compiled loop asks the host for the time every CHECK_EVERY iterations (a
# host callback costs tens of microseconds; an iteration of a target worth
# budgeting costs more).
CHECK_EVERY = 8


def deadline(max_time: Optional[float]) -> float:
  """The deadline `max_time` seconds from now (`math.inf` for None).

  Args:
    max_time: seconds of wall time, > 0, or None for no limit.

  Returns:
    Python float, seconds since `EPOCH`.

  Raises:
    ValueError: `max_time` is not None nor a positive number.
  """
  if max_time is None:
    return math.inf
  if isinstance(max_time, bool) or not isinstance(
      max_time, (int, float)) or not max_time > 0:
    raise ValueError(f"max_time must be None or a number of seconds > 0; got "
                     f"{max_time!r}.")
  return time.monotonic() - EPOCH + float(max_time)


def seconds_left(at: float) -> float:
  """Seconds until the deadline `at` (negative once it has passed)."""
  return at - (time.monotonic() - EPOCH)


def _passed(at) -> np.ndarray:
  return np.asarray(time.monotonic() - EPOCH > float(at))


def expired(at: Array, iteration: Array) -> Array:
  """Inside a compiled loop: whether the deadline `at` has passed.

  Asks the host (an unordered `io_callback`) every `CHECK_EVERY` iterations
  and only for a finite deadline; otherwise False without a callback.

  Args:
    at: `[]` float, the deadline (seconds since `EPOCH`; inf for none); an
      argument of the program, unbatched.
    iteration: `[]` int, the loop's iteration count.

  Returns:
    `[]` bool.
  """
  at = jnp.asarray(at, jnp.float32)
  ask = jnp.isfinite(at) & (iteration % CHECK_EVERY == 0)
  return jax.lax.cond(
      ask, lambda: io_callback(_passed, jax.ShapeDtypeStruct((), jnp.bool_),
                               at, ordered=False),
      lambda: jnp.zeros((), bool))
