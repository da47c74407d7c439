"""Multi-path Pathfinder driven from the host: the start of `vi.auto_fit`.

The same algorithm as `vi_jax.solvers.multipath_pathfinder` (Zhang et al.
2022), arranged as pymc-extras' Pathfinder is: each path's L-BFGS runs on the
host (scipy's L-BFGS-B) over the target's `CompiledDensity` (its flat
unconstrained log density and gradient, compiled once per target), and the
rest is split into programs that never call the target:

1. starts: the keys of the paths and their jittered starts `x0 [P, dim]`;
2. one path's Gaussians: from its accepted iterates `(x_i, grad_i)` (grad
   of -log p), `_step`'s L-BFGS history update and Gaussian `N(mu_i, H_i)`
   at each iterate, and `num_elbo_draws` draws of each with their log q, a
   `lax.scan` over `CHUNK` iterates at a time (the history carried from one
   call to the next, the last chunk padded and masked);
3. the pool: `num_draws` draws of each path's best-ELBO Gaussian and their
   log density under the mixture of the paths' Gaussians;
4. PSIS k-hat of the pooled importance ratios.

The host evaluates log p at the draws of 2 (the ELBOs) and of 3 (the
importance ratios) with the compiled density's value-only kernel. So the target compiles once
(its kernels), and programs 1-4 compile in a fraction of a second, once per
dimension, dtype and settings, shared by every target of that dimension.

Differences from `vi.pathfinder`: scipy's L-BFGS-B (More-Thuente line
search; `gtol` on the sup-norm of the gradient) in place of optax's L-BFGS
(zoom line search; `gtol` on its 2-norm), so paths take other steps; a trial
point with a non-finite log density is rejected by the line search (scipy
sees +inf) where `vi.pathfinder` ends the path, so every accepted iterate is
finite; no pooled draws are returned (auto_fit's start needs the best
Gaussian, the ELBOs and k-hat); a deadline can stop the paths.

References:
  Zhang, Carpenter, Gelman, Vehtari (2022), "Pathfinder: Parallel
  quasi-Newton variational inference", JMLR 23(306); pymc-extras'
  `pymc_extras.inference.pathfinder` (scipy L-BFGS-B over compiled logp and
  gradient functions, the iterates recorded by its callback); Byrd, Lu,
  Nocedal, Zhu (1995), L-BFGS-B; Vehtari et al. (2024), "Pareto smoothed
  importance sampling", JMLR 25(72).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from vi_jax._src import compile_cache
from vi_jax._src import time_budget
from vi_jax._src.types import Array
from vi_jax.criticism import diagnostics
from vi_jax.model.compiled_density import CompiledDensity
from vi_jax.solvers.multipath_pathfinder import _Gaussian
from vi_jax.solvers.multipath_pathfinder import _inverse_hessian_factors
from vi_jax.solvers.multipath_pathfinder import history_update
from vi_jax.solvers.multipath_pathfinder import _log_prob
from vi_jax.solvers.multipath_pathfinder import _sample
from vi_jax.solvers.multipath_pathfinder import _scale_tril

__all__ = ["CHUNK", "PathfinderStart", "pathfinder_start"]

CHUNK = 32  # iterates per call of the Gaussians program (the last padded)
_MEMO_SIZE = 4  # the last evaluations kept for the callback's gradient


class PathfinderStart(NamedTuple):
  """What `pathfinder_start` returns.

  Attributes:
    loc: `[dim]` numpy, mean of the best path's best-ELBO Gaussian (flat
      unconstrained coordinates).
    scale_tril: `[dim, dim]` numpy, lower Cholesky factor of its covariance.
    elbo: `[num_paths]` numpy, each path's best ELBO estimate; `-inf` for a
      path with no finite one (or not run: past the deadline).
    k_hat: Python float, PSIS k-hat of `p / q_mix` at the pooled draws, q_mix
      the equal-weight mixture of the usable paths' Gaussians.
    num_grad_evals: Python int, log density and gradient evaluations of the
      L-BFGS paths (every evaluation scipy asked for, the starts included).
    num_density_evals: Python int, log density evaluations at Gaussian
      draws: `num_elbo_draws` per iterate and `num_draws` per usable path.
    out_of_time: Python bool, the deadline stopped a path (later paths were
      not run).
  """
  loc: np.ndarray
  scale_tril: np.ndarray
  elbo: np.ndarray
  k_hat: float
  num_grad_evals: int
  num_density_evals: int
  out_of_time: bool


class _Path(NamedTuple):
  """One L-BFGS path's accepted iterates, its start first."""
  x: np.ndarray  # [n + 1, dim]
  grad: np.ndarray  # [n + 1, dim], of -log p
  num_grad_evals: int
  out_of_time: bool


class _History(NamedTuple):
  """The L-BFGS history at an iterate, as `multipath_pathfinder._step`
  keeps it."""
  x: Array  # [dim], the iterate
  grad: Array  # [dim], its gradient of -log p
  alpha: Array  # [dim], diagonal of the inverse Hessian estimate
  s: Array  # [m, dim], accepted position updates, oldest first
  z: Array  # [m, dim], accepted gradient updates
  filled: Array  # [m] bool, which rows of s, z hold an update


def _starts(num_paths: int, dim: int, dtype: str, key, init_radius):
  """`(x0 [P, dim], P path keys, key of the pool draws)`, the keys split as
  `multipath_pathfinder._run` splits them (program 1)."""
  key_init, key_paths, key_draws, _ = jax.random.split(key, 4)
  x0 = init_radius * jax.random.uniform(key_init, (num_paths, dim), dtype,
                                        -1., 1.)
  return x0, tuple(jax.random.split(key_paths, num_paths)), key_draws


def _lbfgs_path(density: CompiledDensity, x0, options: dict,
                deadline: float) -> _Path:
  """One path: scipy's L-BFGS-B on -log p from `x0 [dim]`, its accepted
  iterates recorded by the callback (their gradients from a memo of the
  last evaluations; the accepted point is the line search's last trial).

  A non-finite log density or gradient is +inf to scipy (its line search
  backs off). A start with a non-finite one is the whole path. Raises
  StopIteration in the callback at the deadline (`time_budget`'s clock).
  """
  memo, evals = {}, [0]
  stop = time_budget.ScipyDeadline(deadline)

  def neg_log_density(x):
    key = x.tobytes()
    if key not in memo:
      evals[0] += 1
      value, grad = density.value_and_grad_one(x)
      finite = math.isfinite(value) and bool(np.all(np.isfinite(grad)))
      memo[key] = (-value, -grad) if finite else (math.inf, None)
      if len(memo) > _MEMO_SIZE:
        memo.pop(next(iter(memo)))
    value, grad = memo[key]
    return value, (np.zeros_like(x) if grad is None else
                   grad.astype(np.float64))

  x0 = np.asarray(x0, np.float64)
  xs, grads = [x0], [neg_log_density(x0)[1]]

  def callback(intermediate_result):
    x = np.array(intermediate_result.x)  # scipy updates its x in place
    xs.append(x)
    grads.append(neg_log_density(x)[1])
    stop()

  if math.isfinite(neg_log_density(x0)[0]):
    scipy.optimize.minimize(neg_log_density, x0, jac=True, method="L-BFGS-B",
                            callback=callback, options=options)
  dtype = density.dtype
  return _Path(np.stack(xs).astype(dtype), np.stack(grads).astype(dtype),
               evals[0], stop.stopped)


def _update(h: _History, x, grad, valid) -> tuple[_History, _Gaussian]:
  """`_step`'s history update and Gaussian at the next iterate `x [dim]`
  with gradient `grad [dim]` of -log p; `valid` False (padding) keeps the
  history as it is."""
  alpha, s, z, filled, gaussian = history_update(
      h.alpha, h.s, h.z, h.filled, h.x, h.grad, x, grad, valid)
  keep = lambda new, old: jnp.where(valid, new, old)
  return (_History(keep(x, h.x), keep(grad, h.grad), alpha, s, z, filled),
          gaussian)


def _gaussians(num_elbo_draws: int, history: _History, xs, grads, valid,
               iterations, key):
  """Program 2: the Gaussians of `C` iterates and their ELBO draws.

  Args:
    num_elbo_draws: K.
    history: `_History` at the iterate before `xs[0]`.
    xs, grads: `[C, dim]` iterates and their gradients of -log p.
    valid: `[C]` bool, False for padding rows.
    iterations: `[C]` int32, `_step`'s iteration counter of each (the
      iterate's index minus 1), folded into `key` for its draws.
    key: the path's key.

  Returns:
    `(history after the last valid row, (_Gaussian [C], draws [C, K, dim],
    log_q [C, K]))`.
  """
  def body(h, row):
    x, grad, ok, i = row
    h, gaussian = _update(h, x, grad, ok)
    draws, log_q = _sample(gaussian, jax.random.fold_in(key, i),
                           num_elbo_draws)
    return h, (gaussian, draws, log_q)

  return jax.lax.scan(body, history, (xs, grads, valid, iterations))


def _start_gaussian(history_size: int, x0) -> _Gaussian:
  """`_single_path`'s Gaussian before any iterate: `N(x0, I)` (a path with
  no finite ELBO keeps it)."""
  dim, dtype = x0.shape[0], x0.dtype
  empty = jnp.zeros((history_size, dim), dtype)
  ones = jnp.ones((dim,), dtype)
  return _Gaussian(x0, ones, *_inverse_hessian_factors(
      ones, empty, empty, jnp.zeros(history_size, bool)))


def _empty_history(path: _Path, history_size: int) -> _History:
  dim, dtype = path.x.shape[1], path.x.dtype
  empty = np.zeros((history_size, dim), dtype)
  return _History(path.x[0], path.grad[0], np.ones(dim, dtype), empty, empty,
                  np.zeros(history_size, bool))


def _path_elbos(density: CompiledDensity, path: _Path, key, history_size,
                num_elbo_draws) -> tuple[_Gaussian, np.ndarray]:
  """The Gaussians `[n]` of a path's iterates after its start (numpy
  leaves) and their ELBOs `[n]`: `mean(log p - log q)` over K draws, NaN
  as -inf (Zhang et al. 2022, Alg. 1)."""
  n = path.x.shape[0] - 1
  run = compile_cache.quick_jitted(_gaussians, num_elbo_draws)
  history, outs = _empty_history(path, history_size), []
  for lo in range(1, n + 1, CHUNK):
    rows = np.arange(lo, lo + CHUNK)
    at = np.minimum(rows, n)
    history, out = run(history, path.x[at], path.grad[at], rows <= n,
                       (rows - 1).astype(np.int32), key)
    outs.append(jax.tree_util.tree_map(np.asarray, out))
  gaussians, draws, log_q = jax.tree_util.tree_map(
      lambda *leaves: np.concatenate(leaves)[:n], *outs)
  log_p = density.value(draws.reshape(-1, density.dim))
  elbo = np.mean(log_p.reshape(log_q.shape) - log_q, axis=1)
  return gaussians, np.where(np.isnan(elbo), -np.inf, elbo)


def _best(density, path, key, history_size, num_elbo_draws):
  """`(best-ELBO Gaussian, its ELBO, density evaluations)` of one path;
  the start's `N(x0, I)` and -inf when no ELBO is finite."""
  n = path.x.shape[0] - 1
  if n:
    gaussians, elbo = _path_elbos(density, path, key, history_size,
                                  num_elbo_draws)
    i = int(np.argmax(elbo))  # the first best, as `_step` keeps it
    if np.isfinite(elbo[i]):
      return (jax.tree_util.tree_map(lambda leaf: leaf[i], gaussians),
              float(elbo[i]), n * num_elbo_draws)
  start = compile_cache.quick_jitted(_start_gaussian, history_size)(path.x[0])
  return start, -math.inf, n * num_elbo_draws


def _pool(num_draws: int, best: _Gaussian, elbo, key):
  """Program 3: `num_draws` draws of each path's Gaussian (`best`: leaves
  with leading `[P]`), `x [P * num_draws, dim]`, their balance-heuristic
  mixture log density `[P * num_draws]` over the usable paths, and the loc,
  scale_tril of the top-ELBO path's Gaussian (`multipath_pathfinder._run`).
  """
  num_paths = elbo.shape[0]
  x, _ = jax.vmap(_sample, in_axes=(0, 0, None))(
      best, jax.random.split(key, num_paths), num_draws)
  x = x.reshape(num_paths * num_draws, -1)
  usable = jnp.isfinite(elbo)
  log_mix = jax.nn.logsumexp(
      jax.vmap(_log_prob, in_axes=(0, None))(best, x), axis=0,
      b=usable[:, None] / jnp.maximum(jnp.sum(usable), 1))
  top = jax.tree_util.tree_map(lambda leaf: leaf[jnp.argmax(elbo)], best)
  return x, log_mix, top.mu, _scale_tril(top)


def _k_hat(log_p, log_mix, usable):
  """Program 4: PSIS k-hat of `log p - log q_mix` (`[S]` each; rows of
  unusable paths, and non-finite ratios, weigh 0)."""
  log_w = jnp.where(usable, log_p - log_mix, -jnp.inf)
  log_w = jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf)
  return diagnostics.psis(log_w).pareto_k


def _pooled_k_hat(density, best, elbo, key_draws, num_draws):
  """`(loc, scale_tril, k_hat, density evaluations)` from the paths' best
  Gaussians: log p at the usable paths' pool draws only."""
  x, log_mix, loc, scale_tril = compile_cache.quick_jitted(_pool, num_draws)(
      best, elbo, key_draws)
  usable = np.repeat(np.isfinite(elbo), num_draws)
  log_p = np.full(usable.shape, -np.inf, density.dtype)
  if usable.any():
    log_p[usable] = density.value(np.asarray(x)[usable])
  k_hat = compile_cache.quick_jitted(_k_hat)(log_p, log_mix, usable)
  return np.asarray(loc), np.asarray(scale_tril), float(k_hat), int(
      usable.sum())


def pathfinder_start(density: CompiledDensity, key, *, num_paths: int = 4,
                     max_iterations: int = 1000, history_size: int = 6,
                     num_elbo_draws: int = 32, num_draws: int = 1000,
                     init_radius: float = 2., ftol: float = 1e-5,
                     gtol: float = 1e-8, max_linesearch_steps: int = 20,
                     deadline: float = math.inf) -> PathfinderStart:
  """Multi-path Pathfinder over a compiled density, driven from the host.

  `vi.pathfinder`'s algorithm and defaults (see the module docstring for
  the differences): `num_paths` L-BFGS paths on -log p from uniform(
  -init_radius, init_radius) starts, each stopping at a relative decrease
  below `ftol` (scipy's rule), a gradient sup-norm below `gtol` or
  `max_iterations`; at every accepted iterate the Gaussian `N(x - H grad,
  H)` (grad of -log p, H the L-BFGS inverse Hessian of the last
  `history_size` updates with positive curvature), its ELBO from
  `num_elbo_draws` draws; each path's best-ELBO Gaussian; then k-hat of
  `num_draws` draws per path against the paths' mixture.

  Args:
    density: the target's `CompiledDensity`.
    key: a PRNG key (split as `vi.pathfinder` splits it: the same starts
      and the same draws of each iterate's Gaussian).
    num_paths, max_iterations, history_size, num_elbo_draws, num_draws,
      init_radius, ftol, gtol, max_linesearch_steps: as `vi.pathfinder`'s
      (Python ints >= 1 and floats >= 0).
    deadline: seconds on `vi_jax._src.time_budget`'s clock (`math.inf` for
      none); a path stops at its first iteration past it, and later paths
      are not run (the first path always takes an iteration).

  Returns:
    A `PathfinderStart`: `loc [dim]`, `scale_tril [dim, dim]` (numpy, the
    density's dtype), `elbo [num_paths]`, k-hat (Python float, inf when too
    few draws are finite), evaluation counts, `out_of_time`.

  Raises:
    Nothing of its own (settings are checked by `vi.auto_fit`); a target
    that is non-finite everywhere gives paths with ELBO -inf.

  References:
    Zhang, Carpenter, Gelman, Vehtari (2022), Pathfinder, JMLR 23(306);
    pymc-extras' Pathfinder (scipy L-BFGS-B over compiled functions).
  """
  x0, path_keys, key_draws = compile_cache.quick_jitted(
      _starts, num_paths, density.dim, density.dtype.name)(
          key, np.asarray(init_radius, density.dtype))
  x0 = np.asarray(x0)
  options = dict(maxcor=history_size, maxiter=max_iterations,
                 maxls=max_linesearch_steps, ftol=ftol, gtol=gtol)
  best, elbo, grad_evals, density_evals, out_of_time = [], [], 0, 0, False
  for p in range(num_paths):
    if out_of_time:  # not run: its start's Gaussian, unusable
      path = _Path(x0[p:p + 1], np.zeros_like(x0[p:p + 1]), 0, True)
    else:
      path = _lbfgs_path(density, x0[p], options, deadline)
    gaussian, path_elbo, evals = _best(density, path, path_keys[p],
                                       history_size, num_elbo_draws)
    best.append(gaussian)
    elbo.append(path_elbo)
    grad_evals += path.num_grad_evals
    density_evals += evals
    out_of_time = out_of_time or path.out_of_time
  best = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *best)
  elbo = np.asarray(elbo, density.dtype)
  loc, scale_tril, k_hat, pool_evals = _pooled_k_hat(density, best, elbo,
                                                     key_draws, num_draws)
  return PathfinderStart(loc, scale_tril, elbo, k_hat, grad_evals,
                         density_evals + pool_evals, out_of_time)
