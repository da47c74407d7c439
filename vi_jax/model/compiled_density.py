"""The target's log density and gradient, compiled once and called from the host.

`vi.auto_fit` asks the target for values and gradients in many places: the
Laplace stage's L-BFGS and Hessian, Pathfinder's paths and ELBO draws, every
DADVI solve, every flow step, every verdict's draws. Compiling each of those
places as a program of its own compiles the target again each time (2.5-5 s a
stage on small targets, 8-20 s on ODE targets; benchmarks/RESULTS.md, "auto_fit:
where the time goes"). Here the target is compiled once per latent space and
dtype, as one batched kernel in the flat unconstrained coordinates

    x: [batch, dim] -> (log p(T(x)) + log|det J_T(x)|: [batch], its gradient: [batch, dim])

and the host calls it in chunks of `BATCH` rows (the last chunk padded), so
every caller shares one compiled program whatever number of points it asks
for. Host-driven solvers over such a kernel cost microseconds of dispatch per
call, against seconds of compiling a whole while-loop program (pymc-extras'
Pathfinder: scipy's L-BFGS over compiled logp and gradient functions).

One point at a time (an L-BFGS path) has a kernel of its own, and the
Hessian (the Laplace stage's) a program of its own, each compiled on first use.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax._src import compile_cache
from vi_jax.model.bijectors import LatentSpace
from vi_jax.model.target import flat_log_density
from vi_jax.model.target import traced_once

__all__ = ["BATCH", "CompiledDensity", "compiled_density"]

BATCH = 64  # rows per kernel call (the one compiled batch shape)


@dataclasses.dataclass(frozen=True, eq=False)
class CompiledDensity:
  """The flat unconstrained log density of one target, compiled once.

  Attributes:
    dim: Python int, the unconstrained dimension.
    dtype: numpy dtype of the kernel's inputs and outputs.
    kernel: the jitted `[BATCH, dim] -> ([BATCH], [BATCH, dim])`.
    value_kernel: the jitted `[BATCH, dim] -> [BATCH]`, the log density
      alone (for draws that need no gradient: a verdict's, Pathfinder's ELBO
      draws): 2 to 3 times cheaper a call on targets with data, and to
      compile (benchmarks/RESULTS.md).
    kernel_one: the jitted `[dim] -> ((), [dim])`, for one point at a time
      (an L-BFGS path; compiled on first call: a batched call costs BATCH
      times one point's work on a target with data).
    hessian_fn: the jitted `[dim] -> [dim, dim]` (compiled on first call).
    traceable: the kernel's function before jit, `[n, dim] -> ([n], [n,
      dim])` for any n, to trace into a program that runs many target
      evaluations in one loop (the flow's Adam steps).
  """
  dim: int
  dtype: Any
  kernel: Callable
  value_kernel: Callable
  kernel_one: Callable
  hessian_fn: Callable
  traceable: Callable

  def value_and_grad(self, x) -> tuple[np.ndarray, np.ndarray]:
    """`(log_p [n], grad [n, dim])` at the rows of `x: [n, dim]` (numpy).

    Non-finite values stay as they are (NaN where the target is undefined);
    the callers decide what they mean.
    """
    x = np.asarray(x, self.dtype).reshape(-1, self.dim)
    values = np.empty((x.shape[0],), self.dtype)
    grads = np.empty(x.shape, self.dtype)
    for lo, rows, chunk in _chunks(x):
      v, g = self.kernel(chunk)
      values[lo:lo + rows] = np.asarray(v)[:rows]
      grads[lo:lo + rows] = np.asarray(g)[:rows]
    return values, grads

  def value(self, x) -> np.ndarray:
    """`log_p [n]` at the rows of `x: [n, dim]` (numpy), no gradient."""
    x = np.asarray(x, self.dtype).reshape(-1, self.dim)
    values = np.empty((x.shape[0],), self.dtype)
    for lo, rows, chunk in _chunks(x):
      values[lo:lo + rows] = np.asarray(self.value_kernel(chunk))[:rows]
    return values

  def value_and_grad_one(self, x) -> tuple[float, np.ndarray]:
    """`(log_p, grad [dim])` at one point `x: [dim]` (numpy)."""
    v, g = self.kernel_one(np.asarray(x, self.dtype).reshape(self.dim))
    return float(v), np.asarray(g)

  def hessian(self, x) -> np.ndarray:
    """`[dim, dim]` Hessian of the log density at `x: [dim]` (forward over
    reverse mode; a second compiled program)."""
    return np.asarray(self.hessian_fn(np.asarray(x, self.dtype)))


def _chunks(x):
  """`(start, rows, chunk [BATCH, dim])` over the rows of x, the last chunk
  padded with copies of its first row."""
  for lo in range(0, x.shape[0], BATCH):
    chunk = x[lo:lo + BATCH]
    rows = chunk.shape[0]
    if rows < BATCH:
      chunk = np.concatenate(
          [chunk, np.broadcast_to(chunk[:1], (BATCH - rows, x.shape[1]))])
    yield lo, rows, chunk


def _build(target_log_prob_fn, space: LatentSpace, dtype) -> CompiledDensity:
  log_density = flat_log_density(traced_once(target_log_prob_fn), space)
  one = lambda x: log_density(x[None])[0]
  traceable = jax.vmap(jax.value_and_grad(one))
  kernel_one = jax.jit(jax.value_and_grad(one))
  hessian_fn = compile_cache.jit_once(jax.hessian(one))
  return CompiledDensity(space.dim, np.dtype(dtype), jax.jit(traceable),
                         jax.jit(log_density), kernel_one, hessian_fn,
                         traceable)


def compiled_density(target_log_prob_fn, space: LatentSpace,
                     dtype=None) -> CompiledDensity:
  """The target's `CompiledDensity` over `space`, built once per `(target,
  space, dtype)` and cached (`vi_jax._src.compile_cache`).

  Args:
    target_log_prob_fn: log density of one draw (TFP's calling convention,
      `vi_jax.model.target.call_target`).
    space: the `LatentSpace` (shapes and bijectors) of its latents.
    dtype: the floating dtype of the unconstrained vector (default: JAX's
      default float).

  Returns:
    A `CompiledDensity` (inputs and outputs numpy arrays of `dtype`); its
    kernels compile on their first call.

  Raises:
    Nothing when built; calls raise what the target raises when traced.
    Non-finite values are returned, not raised.

  References:
    pymc-extras' Pathfinder (compiled logp and gradient functions driven by
    scipy.optimize); DADVI's reference code (Giordano, Ingram, Broderick
    2024), which does the same.
  """
  dtype = jnp.dtype(dtype if dtype is not None else jnp.zeros(()).dtype).name
  return compile_cache.program(_build, target_log_prob_fn, space, dtype)
