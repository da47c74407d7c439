import os

# Tests run on CPU with a few host devices available for sharding tests.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite is compile-bound (hundreds of small programs, each run briefly):
# XLA's backend (LLVM) optimization level 1 in place of 2, and XLA:CPU's
# older fusion emitters (as `vi_jax._src.compile_cache.ONCE_OPTIONS` for the
# run-once programs), compile them faster (notebook 01, one core: 49 -> 40 s
# at level 1; 51 -> 32 s with the older emitters too). The programs'
# operations are the same; benchmarks/ and the demo run at XLA's defaults.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false")

import contextlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"

# Files whose tests take longest (notebooks, the quick benchmark run, the
# two-process fit, auto_fit): run first, so that `pytest -n 2` does not end
# with one worker on a two-minute test while the other idles.
_SLOW_FILES = ("test_notebooks.py", "test_benchmarks.py",
               "test_multiprocess.py", "test_automatic_vi.py", "test_flows.py",
               "test_multipath_pathfinder.py")


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.name
    return _SLOW_FILES.index(name) if name in _SLOW_FILES else len(_SLOW_FILES)
  items.sort(key=rank)  # stable: the order within a file is kept


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
