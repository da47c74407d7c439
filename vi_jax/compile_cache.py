"""The compile cache of top-level `vi.fit` calls.

`jax.jit` caches compiled programs per Python function object; `vi.fit`
builds its loop as a closure over the target, surrogate, optimizer, loss and
trace_fn, so a fresh closure per call would compile again. `cached` keeps the
closure (and so JAX's compiled executables) keyed on the *identities* of the
objects it closes over plus the static settings; JAX's own cache then keys on
the shapes and dtypes of the arrays passed in.

What invalidates an entry: a different object for any of target_log_prob_fn,
surrogate, optimizer, loss, trace_fn, convergence_criterion or the progress
bar's file (e.g. `optax.adam(1e-2)` written inline makes a new optimizer per
call: build it once and pass the same object), a different num_steps,
sample_size, batch_size, num_shards, skip_nonfinite,
max_consecutive_nonfinite or progress setting, or different data /
model-params structure, shapes or dtypes. The cache holds strong references
to at most `MAX_ENTRIES` programs (least recently used dropped first);
`clear()` empties it.

`jit_once` is `jax.jit` for the programs that run once per call (L-BFGS
solves, Pathfinder, `vi.auto_fit`'s stages): there XLA's compile time, not
the run, is most of the wait.
"""

import collections
import functools
from typing import Any, Callable, Hashable, TypeVar

import jax
import jax.numpy as jnp

__all__ = ["MAX_ENTRIES", "ONCE_OPTIONS", "cached", "clear", "jit_once",
           "signature"]

MAX_ENTRIES = 16
# XLA's backend (LLVM) optimization level 1 in place of the default 2. One
# core, first call of `vi.pathfinder` on eight schools: 25.9 s -> 13.4 s, its
# run 0.22 s either way (SV SP500 small: 25.0 -> 20.3 s, run 0.49 -> 0.46 s);
# `vi.auto_fit` with its defaults, eight schools 96 s -> 47 s (as
# XLA_FLAGS=--xla_backend_optimization_level=1). Level 0 halves
# the compile again but runs Pathfinder 2x to 4x slower.
# XLA:CPU's older (non-MLIR) fusion emitters compile these programs faster
# again: one core, the Laplace program on SV SP500 small 7.5 -> 5.0 s (run
# 25 ms either way); `vi.auto_fit` with its defaults on eight schools
# 58.4 -> 41.1 s, SV SP500 small 86.0 -> 66.6 s, breast cancer 29.0 -> 21.2 s,
# a 30,000-row logistic regression through the flow 62.9 -> 56.4 s (each
# stage as fast or faster). Their code can run slower: a low-rank DADVI
# stage of 366,000 gradient evaluations on item response theory took 852 s
# in place of 539 s, and `vi.fit`'s step loop (a plain jit, not this one)
# 2x longer on German credit (so the step loop keeps the defaults). A JAX that
# does not know an option gets the plain jit (`jit_once`).
ONCE_OPTIONS = {"xla_backend_optimization_level": 1,
                "xla_cpu_use_fusion_emitters": False}
T = TypeVar("T")
_entries: "collections.OrderedDict[Hashable, tuple[tuple, Any]]" = (
    collections.OrderedDict())


def cached(objects: tuple, static: Hashable, make: Callable[[], T]) -> T:
  """The value made by `make()` for these objects and settings, made once.

  Args:
    objects: the objects the value closes over, compared by identity (they
      are kept alive by the cache, so an id is never reused while cached).
    static: hashable settings the value depends on.
    make: builds the value on a miss.

  Returns:
    The cached or newly made value.
  """
  key = (tuple(id(o) for o in objects), static)
  entry = _entries.get(key)
  if entry is not None and all(a is b for a, b in zip(entry[0], objects)):
    _entries.move_to_end(key)
    return entry[1]
  value = make()
  _entries[key] = (objects, value)
  while len(_entries) > MAX_ENTRIES:
    _entries.popitem(last=False)
  return value


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
    if not _transformed((args, kwargs)):
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


def _transformed(args) -> bool:
  """Whether the call is inside a transformation that its arguments show
  (tracers) or that stages it (jit, scan, while, eval_shape: a constant made
  there is a tracer)."""
  return isinstance(jnp.zeros(()), jax.core.Tracer) or any(
      isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(args))
