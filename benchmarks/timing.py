"""Timing: compile once, then run the compiled methods interleaved."""

import functools
import statistics
import time
from typing import Optional

import jax


def compile_fn(fn, *args):
  """(compiled, seconds to trace + lower + compile) of `jax.jit(fn)`.

  Compiled twice; the smaller time is reported. The second compile wraps `fn`
  anew (`functools.partial`), so the program is traced, lowered and compiled
  again while helpers that libraries share and cache (`jax.random`'s jitted
  samplers, ...) are warm for every method alike: neither the order of the
  methods nor one noisy compile decides the comparison.
  """
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.jit(functools.partial(fn)).lower(*args).compile()
  return compiled, min(first, time.perf_counter() - t0)


def time_interleaved(compiled: dict, args: tuple, repeats: int,
                     outputs: Optional[dict] = None,
                     cpu: Optional[dict] = None,
                     budget_s: float = float("inf")) -> dict:
  """Runs each compiled function `repeats` times, interleaved; name -> [s].

  One warm-up call each first, whose result goes to `outputs[name]` when a
  dict is given. Interleaving spreads machine noise evenly over the methods.
  When `cpu` is a dict, it receives name -> [process CPU seconds] of the same
  runs (all threads; less sensitive than wall time to other jobs on a shared
  machine). Stops after 3 repeats once `budget_s` seconds have passed.
  """
  for name, f in compiled.items():
    out = jax.block_until_ready(f(*args))
    if outputs is not None:
      outputs[name] = out
  runs = {name: [] for name in compiled}
  if cpu is not None:
    cpu.update({name: [] for name in compiled})
  start = time.perf_counter()
  for r in range(repeats):
    if r >= 3 and time.perf_counter() - start > budget_s:
      break
    for name, f in compiled.items():
      c0, t0 = time.process_time(), time.perf_counter()
      jax.block_until_ready(f(*args))
      runs[name].append(time.perf_counter() - t0)
      if cpu is not None:
        cpu[name].append(time.process_time() - c0)
  return runs


def time_compiled(fn, *args, repeats=5):
  """(compile seconds, median run seconds) of `jax.jit(fn)(*args)`."""
  compiled, compile_s = compile_fn(fn, *args)
  runs = time_interleaved({"f": compiled}, args, repeats)["f"]
  return compile_s, statistics.median(runs)


def noise(runs) -> float:
  """Relative spread of repeated timings: (max - min) / median."""
  med = statistics.median(runs)
  return (max(runs) - min(runs)) / med if med else float("nan")
