"""Deadlines: seconds from now on the monotonic clock, checked before any
compilation when auto_fit is given a bad max_time."""

import math
import time

import jax
import jax.numpy as jnp
import pytest

import vi_jax as vi
from vi_jax._src import time_budget


def test_deadline_is_max_time_seconds_from_now():
  assert math.isinf(time_budget.deadline(None))
  at = time_budget.deadline(2.5)
  left = time_budget.seconds_left(at)
  assert 2.4 < left <= 2.5
  time.sleep(0.05)
  assert time_budget.seconds_left(at) <= left - 0.05


@pytest.mark.parametrize("bad", [0, -1., "10", True, float("nan")])
def test_bad_max_time_is_named_before_anything_compiles(bad):
  with pytest.raises(ValueError, match="max_time"):
    time_budget.deadline(bad)
  with pytest.raises(ValueError, match="max_time"):
    vi.auto_fit(lambda z: -0.5 * jnp.sum(z ** 2), (2,), key=jax.random.key(0),
                max_time=bad, progress_bar=False)
