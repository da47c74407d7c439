"""Wall-clock budgets: deadlines that the host checks between programs.

A deadline is a Python float, seconds on this process's monotonic clock since
`EPOCH` (`math.inf` for none). A long solve (an L-BFGS run on many fixed
draws, a flow's Adam steps) is run by the host in chunks of iterations
(`vi_jax.auto.stage_programs`), which checks `seconds_left` between them. The
check stays on the host: a program with a host callback inside could check
the clock itself, but JAX's persistent compilation cache does not store such
programs.
"""

import math
import time
from typing import Optional

__all__ = ["EPOCH", "ScipyDeadline", "deadline", "seconds_left"]

EPOCH = time.monotonic()


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


class ScipyDeadline:
  """A `scipy.optimize.minimize` callback that ends the solve at the deadline.

  Called after each iteration; once `seconds_left(at) <= 0` it sets
  `stopped` and raises StopIteration, which scipy (>= 1.11) turns into a
  normal return with the last iterate (`OptimizeResult.x`).

  Attributes:
    at: the deadline (Python float, seconds since `EPOCH`; inf for none).
    stopped: Python bool, True once the deadline ended the solve.
  """

  def __init__(self, at: float):
    self.at, self.stopped = at, False

  def __call__(self, intermediate_result=None):
    del intermediate_result
    if seconds_left(self.at) <= 0:
      self.stopped = True
      raise StopIteration
