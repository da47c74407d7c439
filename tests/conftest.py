import os

# Tests run on CPU with a few host devices available for sharding tests.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite is compile-bound (hundreds of small programs, each run briefly):
# XLA's backend (LLVM) optimization level 1 in place of 2 compiles them
# faster (notebook 01, one core: 49 -> 40 s). The programs' operations are
# the same; benchmarks/ and the demo run at XLA's defaults.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")

import contextlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def _count_compiles():
  """Collects one event per XLA backend compilation inside the block."""
  events = []

  def listener(event, duration_secs, **kwargs):
    del duration_secs, kwargs
    if event == _BACKEND_COMPILE:
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture
def count_compiles():
  """`with count_compiles() as events:`; `len(events)` compilations ran."""
  return _count_compiles
