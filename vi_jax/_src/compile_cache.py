"""The one compile cache of vi_jax.

`jax.jit` caches compiled programs per Python function object; vi_jax builds
its programs as closures over the target, the surrogate, the optimizer, the
loss and the latent space, so a fresh closure per call would compile again.
`cached(key, make)` keeps the value `make()` built (a jitted closure, and so
JAX's compiled executables) for an equal hashable `key`; JAX's own cache then
keys on the shapes and dtypes of the arrays passed in. `program(build, *args)`
is the same for a builder and its hashable arguments (a target, a
`LatentSpace`, a surrogate, ints), and `jitted(fn, *static)` compiles
`fn(*static, *args)` as a function of `args`.

Keys compare their parts with `==`: functions, optimizers and surrogates (tuples
of functions) by identity, a `LatentSpace` by its shapes and bijector objects.
What invalidates an entry for `vi.fit`: a different object for any of
target_log_prob_fn, surrogate, optimizer, loss, trace_fn,
convergence_criterion or the progress bar's file (e.g. `optax.adam(1e-2)`
written inline makes a new optimizer per call: build it once and pass the same
object), a different num_steps, sample_size, batch_size, num_shards,
skip_nonfinite, max_consecutive_nonfinite or progress setting, or different
data / model-params structure, shapes or dtypes. A key with an unhashable part
is not cached (the value is built each call).

The cache holds at most `MAX_ENTRIES` values, least recently used dropped
first, with strong references: a compiled program closes over its target, so
an entry keeps that target alive until it is dropped or `clear()` empties the
cache (a weak reference to the target would die with the program that holds
it).

`jit_once` is `jax.jit` for the programs that run once per call (L-BFGS
solves, Pathfinder, `vi.auto_fit`'s stages): there XLA's compile time, not
the run, is most of the wait, so they compile with `ONCE_OPTIONS`
(benchmarks/RESULTS.md, "Compile settings of the run-once programs", has the
measurements behind them). `quick_jitted` compiles at XLA's level 0
(`QUICK_OPTIONS`) the small target-free programs that `vi.auto_fit`'s host
calls a few times, where even level 1 compiles longer than they run.
"""

import collections
import functools
import os
from typing import Any, Callable, Hashable, Optional, TypeVar

import jax
import jax.numpy as jnp

from vi_jax._src.tracing import under_transformation

__all__ = ["MAX_ENTRIES", "ONCE_OPTIONS", "QUICK_OPTIONS", "cached", "clear",
           "host_jit", "jit_once", "jitted", "program", "quick_jitted",
           "signature", "use_persistent_cache"]

MAX_ENTRIES = 64
# XLA's backend (LLVM) optimization level 1 and XLA:CPU's older (non-MLIR)
# fusion emitters: faster compiles of the run-once programs for a slower run
# (measured in benchmarks/RESULTS.md); `vi.fit`'s step loop keeps the defaults.
ONCE_OPTIONS = {"xla_backend_optimization_level": 1,
                "xla_cpu_use_fusion_emitters": False}
# Level 0, for target-free programs without long loops that the host calls a
# few times (`vi.auto_fit`'s verdict, draws, Newton step, Pathfinder's
# Gaussians): their compile halves again (the verdict's PSIS program on 2 x
# 16,000 draws: 0.25 -> 0.12 s) for a run some tens of ms slower
# (benchmarks/RESULTS.md).
QUICK_OPTIONS = {"xla_backend_optimization_level": 0,
                 "xla_cpu_use_fusion_emitters": False}
T = TypeVar("T")
_entries: "collections.OrderedDict[Hashable, Any]" = collections.OrderedDict()


def cached(key: Hashable, make: Callable[[], T]) -> T:
  """The value made by `make()` for this key, made once while it is cached.

  Args:
    key: hashable; its parts are compared with `==` (functions by identity).
      A key that cannot be hashed is not cached.
    make: builds the value on a miss.

  Returns:
    The cached or newly made value.
  """
  try:
    value = _entries.pop(key)
  except TypeError:  # an unhashable part: build it every time
    return make()
  except KeyError:
    value = make()
  _entries[key] = value  # the most recently used last
  while len(_entries) > MAX_ENTRIES:
    _entries.popitem(last=False)
  return value


def program(build: Callable[..., T], *args) -> T:
  """`build(*args)`, made once per equal `(build, args)` (see `cached`).

  Args:
    build: a program builder, e.g. `(target, space, max_iterations) -> jitted`.
    *args: its hashable arguments.

  Returns:
    What `build` returned, cached.
  """
  return cached((build, args), lambda: build(*args))


def jitted(fn: Callable, *static) -> Callable:
  """`fn(*static, *args)` as a function of `args`, compiled once per `static`.

  Op-by-op (eager) dispatch of a sampling + target + PSIS pipeline compiles
  dozens of small kernels on a first call; one jit (with `ONCE_OPTIONS`) is
  several times cheaper.

  Args:
    fn: `(*static, *args) -> pytree of arrays`.
    *static: hashable leading arguments (target, surrogate, ints).

  Returns:
    A function of the remaining arguments.
  """
  return program(_jit_partial, fn, *static)


def _jit_partial(fn, *static):
  return jit_once(functools.partial(fn, *static))


def clear() -> None:
  """Drops every cached program."""
  _entries.clear()


def signature(tree) -> tuple:
  """Hashable structure, shapes and dtypes of a pytree (part of a key)."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return treedef, tuple((tuple(jnp.shape(l)), str(jnp.result_type(l)))
                        for l in leaves)


def jit_once(fn: Callable, **jit_kwargs) -> Callable:
  """`jax.jit(fn, **jit_kwargs)`, compiled with `ONCE_OPTIONS` when called
  outside any transformation: for programs that run once per call, whose
  compile time is most of their wall time. Under a transformation (an outer
  `jax.jit`, `lax.scan`, `vmap`, `grad`, also of arrays `fn` closes over) it
  is a plain `jax.jit` (JAX takes compiler options on top-level jits only;
  the outer program's apply).

  Args:
    fn: the function to compile; any pytree of arrays in and out (shapes and
      dtypes as `fn` defines them).
    **jit_kwargs: passed to both `jax.jit`s (e.g. `static_argnums`).

  Returns:
    A function with `fn`'s signature and results.

  Raises:
    Whatever `fn` or `jax.jit` raise; the ValueError JAX raises for compiler
    options on a staged jit, and its "No such compile option" error (an
    XLA without one of `ONCE_OPTIONS`), are caught and the plain jit used
    instead.

  References:
    `jax.jit(..., compiler_options=...)`; XLA's DebugOptions
    `xla_backend_optimization_level`.
  """
  plain = jax.jit(fn, **jit_kwargs)
  once = jax.jit(fn, compiler_options=ONCE_OPTIONS, **jit_kwargs)

  @functools.wraps(fn)
  def call(*args, **kwargs):
    if not under_transformation(args, kwargs):
      try:
        return once(*args, **kwargs)
      except ValueError as e:  # a tracer fn closes over: staged after all
        if "compiler_options" not in str(e):
          raise
      except jax.errors.JaxRuntimeError as e:  # an option this XLA lacks
        if "No such compile option" not in str(e):
          raise
    return plain(*args, **kwargs)

  return call


def host_jit(fn: Callable, compiler_options=None) -> Callable:
  """`jax.jit(fn)` with `ONCE_OPTIONS` (or `compiler_options`), for a
  program that only the host calls (concrete arrays in, never under a
  transformation), and calls often: an L-BFGS solve's or an Adam loop's
  step. No per-call check (`jit_once` checks for a transformation on every
  call: tens of microseconds with many arguments).

  Args:
    fn: the function to compile.
    compiler_options: XLA options (default `ONCE_OPTIONS`; `QUICK_OPTIONS`
      for a program called a few times).

  Returns:
    The jitted function.
  """
  return jax.jit(fn, compiler_options=compiler_options or ONCE_OPTIONS)


def quick_jitted(fn: Callable, *static) -> Callable:
  """`jitted` for a host-only program called a few times: `host_jit` with
  `QUICK_OPTIONS` of `fn` with its first arguments `static`, cached.

  Args:
    fn: the function; its first `len(static)` arguments are fixed.
    *static: hashable Python values (part of the cache key).

  Returns:
    The jitted `functools.partial(fn, *static)` (arrays in and out as `fn`
    defines them; concrete arrays only, never under a transformation).

  Raises:
    Whatever `fn` or `jax.jit` raise when it is called.
  """
  return program(_quick_partial, fn, *static)


def _quick_partial(fn, *static):
  return host_jit(functools.partial(fn, *static), QUICK_OPTIONS)


def use_persistent_cache(directory: Optional[str] = None) -> str:
  """Turns on JAX's persistent compilation cache: a new process that compiles
  a program compiled before (same program, shapes, options, JAX and XLA)
  loads it from disk instead.

  Opt-in, as nothing here writes outside a cache folder unasked. Every
  program is kept, however fast it compiled (`vi.auto_fit` compiles dozens of
  them). Tracing and lowering still run in the new process; programs with
  host callbacks (`vi.fit`'s progress bar) are not stored by JAX.

  Args:
    directory: the cache folder (created if missing); default
      `$VI_JAX_CACHE_DIR`, else `~/.cache/vi_jax/xla`.

  Returns:
    The folder used.

  References:
    JAX's persistent compilation cache (`jax_compilation_cache_dir`).
  """
  path = directory or os.environ.get("VI_JAX_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "vi_jax", "xla")
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
