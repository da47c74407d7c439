"""Pathfinder: Gaussian approximations along L-BFGS paths (Zhang et al. 2022).

Pathfinder maximizes the unconstrained log density `log p(T(x)) + log|det
J_T(x)|` by L-BFGS from a jittered start; at each iterate it forms the
Gaussian `N(x + H grad log p(x), H)` with `H` the L-BFGS inverse Hessian
(diagonal plus low rank, built from the last `history_size` accepted updates),
estimates its ELBO from `num_elbo_draws` draws, and keeps the best. Multi-path
Pathfinder runs `num_paths` such paths (here vmapped in one compiled program),
draws from each path's best Gaussian and pools the draws by Pareto-smoothed
importance resampling.

Everything the algorithm needs is a pure function of arrays: `pathfinder`
composes with `jax.jit` and `jax.vmap` over keys (its non-array inputs are
static).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from vi_jax.model import bijectors as bij_lib
from vi_jax.criticism import diagnostics
from vi_jax._src.types import Array, Params, PyTree
from vi_jax.surrogates.base import Surrogate, default_dtype, initial_loc
from vi_jax.surrogates.full_rank import full_rank_normal, full_rank_params
from vi_jax._src import validation as vv
from vi_jax._src.lbfgs import (keep_finite, lbfgs_start, lbfgs_step,
                               relative_decrease)
from vi_jax.model.target import (call_target, check_target_on_space,
                                 flat_log_density,
                                 traced_once)
from vi_jax._src import compile_cache
from vi_jax._src.compile_cache import jit_once

__all__ = ["PathfinderResult", "pathfinder"]


class PathfinderResult(NamedTuple):
  """What `pathfinder` returns.

  Attributes:
    surrogate: `vi_jax.surrogates.full_rank_normal(event_shape, bijector)`;
      its Gaussian lives in the flat unconstrained space.
    params: its params: the best-ELBO Gaussian of the best path.
    loc: `[dim]` unconstrained mean of that Gaussian.
    scale_tril: `[dim, dim]` lower Cholesky factor of its covariance.
    elbo: `[num_paths]` best ELBO estimate of each path (higher is better);
      `-inf` for a path on which no iterate had a finite ELBO.
    draws: pooled draws, PSIS-resampled across paths (with replacement): a
      pytree like `event_shape` with leading `[num_draws]`, in each latent's
      support.
    k_hat: shape (), PSIS k-hat of the pooled importance weights `p(x) /
      q_mix(x)`, q_mix the equal-weight mixture of the paths' Gaussians (`inf`
      when too few draws are finite to fit it).
    num_grad_evals: shape (), int32: evaluations of the target log density
      with its gradient: L-BFGS's start and every line-search trial, all
      paths.
    num_density_evals: shape (), int32: evaluations of the log density alone
      (no gradient): the ELBO draws of every iterate and the final importance
      draws, all paths (Blackjax's pathfinder reports the two the same way).
  """
  surrogate: Surrogate
  params: Params
  loc: Array
  scale_tril: Array
  elbo: Array
  draws: PyTree
  k_hat: Array
  num_grad_evals: Array
  num_density_evals: Array


class _Gaussian(NamedTuple):
  """N(mu, diag(alpha) + beta gamma beta^T) (Zhang et al. 2022, Alg. 4)."""
  mu: Array     # [dim]
  alpha: Array  # [dim]
  beta: Array   # [dim, 2m]
  gamma: Array  # [2m, 2m]


class _PathState(NamedTuple):
  x: Array             # [dim] current iterate
  value: Array         # () -log density at x
  grad: Array          # [dim] its gradient
  opt_state: optax.OptState
  alpha: Array         # [dim] diagonal of the inverse Hessian estimate
  s: Array             # [m, dim] accepted position updates, oldest first
  z: Array             # [m, dim] accepted gradient updates
  filled: Array        # [m] bool, which rows of s, z hold an update
  iteration: Array     # () int32
  done: Array          # () bool
  num_evals: Array     # () int32, value-and-gradient evaluations
  best_elbo: Array     # ()
  best: _Gaussian


def _inverse_hessian_factors(alpha, s, z, filled) -> tuple[Array, Array]:
  """beta `[dim, 2m]`, gamma `[2m, 2m]` of the L-BFGS inverse Hessian.

  `H = diag(alpha) + beta gamma beta^T` (Byrd, Nocedal, Schnabel 1994; eq.
  (II.2) of Zhang et al. 2022). Empty history rows (zeros) contribute nothing:
  their diagonal in R is set to 1.
  """
  s_t, z_t = s.T, z.T                           # [dim, m]
  sz = s @ z_t                                  # [m, m]
  r = jnp.triu(sz) + jnp.diag(jnp.where(filled, 0., 1.).astype(sz.dtype))
  eta = jnp.diagonal(sz)
  r_inv = jax.scipy.linalg.solve_triangular(
      r, jnp.eye(r.shape[0], dtype=r.dtype), lower=False)
  alpha_z = jnp.sqrt(alpha)[:, None] * z_t
  lower_right = r_inv.T @ (alpha_z.T @ alpha_z + jnp.diag(eta)) @ r_inv
  zeros = jnp.zeros_like(r)
  gamma = jnp.block([[zeros, -r_inv], [-r_inv.T, lower_right]])
  beta = jnp.concatenate([alpha[:, None] * z_t, s_t], axis=1)
  return beta, gamma


def _sqrt_factors(g: _Gaussian):
  """Q `[dim, 2m]`, chol(I + R gamma R^T) `[2m, 2m]`, log det of the covariance."""
  q, r = jnp.linalg.qr(g.beta / jnp.sqrt(g.alpha)[:, None])
  eye = jnp.eye(r.shape[0], dtype=r.dtype)
  chol = jnp.linalg.cholesky(eye + r @ g.gamma @ r.T)
  log_det = jnp.sum(jnp.log(g.alpha)) + 2. * jnp.sum(
      jnp.log(jnp.diagonal(chol)))
  return q, chol - eye, log_det


def _sample(g: _Gaussian, key, n: int) -> tuple[Array, Array]:
  """n draws `[n, dim]` of the Gaussian and their log density `[n]` (Alg. 4)."""
  q, chol_minus_eye, log_det = _sqrt_factors(g)
  dim = g.mu.shape[0]
  u = jax.random.normal(key, (n, dim), g.mu.dtype)
  x = g.mu + jnp.sqrt(g.alpha) * (((u @ q) @ chol_minus_eye.T) @ q.T + u)
  log_q = -0.5 * (log_det + jnp.sum(u**2, axis=-1) + dim * jnp.log(2. * jnp.pi))
  return x, log_q


def _log_prob(g: _Gaussian, x) -> Array:
  """Log density `[n]` of points `x: [n, dim]` under the Gaussian.

  Inverts the draw map of `_sample`: `(I + Q (C - I) Q^T)^-1 = I + Q (C^-1 -
  I) Q^T` for Q with orthonormal columns.
  """
  q, chol_minus_eye, log_det = _sqrt_factors(g)
  eye = jnp.eye(q.shape[1], dtype=q.dtype)
  v = (x - g.mu) / jnp.sqrt(g.alpha)
  vq = v @ q
  solved = jax.scipy.linalg.solve_triangular(chol_minus_eye + eye, vq.T,
                                             lower=True).T
  u = v + (solved - vq) @ q.T
  dim = g.mu.shape[0]
  return -0.5 * (log_det + jnp.sum(u**2, axis=-1) + dim * jnp.log(2. * jnp.pi))


def _scale_tril(g: _Gaussian) -> Array:
  """Lower Cholesky factor `[dim, dim]` of the covariance, by QR of a square root."""
  q, chol_minus_eye, _ = _sqrt_factors(g)
  dim = g.mu.shape[0]
  root = jnp.sqrt(g.alpha)[:, None] * (
      jnp.eye(dim, dtype=q.dtype) + q @ chol_minus_eye @ q.T)
  _, r = jnp.linalg.qr(root.T)                  # root = r^T q'^T
  tril = r.T
  return tril * jnp.where(jnp.diagonal(tril) < 0, -1., 1.).astype(tril.dtype)


def _diagonal_update(alpha, s, z):
  """Pathfinder's diagonal inverse-Hessian update (Zhang et al. 2022, Alg. 3)."""
  a = jnp.sum(alpha * z**2)
  b = jnp.dot(z, s)
  c = jnp.sum(s**2 / alpha)
  inv = a / (b * alpha) + z**2 / b - a * s**2 / (b * c * alpha**2)
  return 1. / inv


def _elbo(log_density, g: _Gaussian, key, num_elbo_draws):
  x, log_q = _sample(g, key, num_elbo_draws)
  elbo = jnp.mean(log_density(x) - log_q)
  return jnp.where(jnp.isnan(elbo), -jnp.inf, elbo)


def history_update(alpha, s, z, filled, x_old, grad_old, x, grad, ok):
  """One iterate's L-BFGS history update and its Gaussian (Zhang et al. 2022,
  Algs. 3-4): `(alpha, s, z, filled, _Gaussian)`.

  The update `(x - x_old, grad - grad_old)` (grads of -log p, `[dim]`) is
  pushed into the `[m, dim]` buffers when `ok` and its curvature is positive;
  the diagonal `alpha [dim]` is updated (kept when not finite and positive);
  the Gaussian is `N(x - H grad, H)`.
  """
  ds, dz = x - x_old, grad - grad_old
  eps = jnp.finfo(x.dtype).eps
  accept = ok & (jnp.dot(ds, dz) > eps * jnp.dot(dz, dz))
  push = lambda buf, row: jnp.where(
      accept, jnp.roll(buf, -1, axis=0).at[-1].set(row), buf)
  new_alpha = jnp.where(accept, _diagonal_update(alpha, ds, dz), alpha)
  alpha = jnp.where(jnp.all(jnp.isfinite(new_alpha) & (new_alpha > 0)),
                    new_alpha, alpha)
  s, z, filled = push(s, ds), push(z, dz), push(filled, True)
  beta, gamma = _inverse_hessian_factors(alpha, s, z, filled)
  # grad is of -log p: the Newton-like mean x - H grad.
  mu = x - alpha * grad - beta @ (gamma @ (beta.T @ grad))
  return alpha, s, z, filled, _Gaussian(mu, alpha, beta, gamma)


def _step(log_density, solver, num_elbo_draws, ftol, gtol, max_iterations,
          key, st: _PathState) -> _PathState:
  """One L-BFGS iteration, its history update and its Gaussian's ELBO."""
  neg = lambda x: -log_density(x[None])[0]
  step = lbfgs_step(neg, solver, st.x, st.value, st.grad, st.opt_state)
  x, value, grad, finite = step.x, step.value, step.grad, step.finite
  alpha, s, z, filled, gaussian = history_update(
      st.alpha, st.s, st.z, st.filled, st.x, st.grad, x, grad, finite)
  elbo = _elbo(log_density, gaussian, jax.random.fold_in(key, st.iteration),
               num_elbo_draws)
  elbo = jnp.where(finite, elbo, -jnp.inf)
  better = elbo > st.best_elbo
  rel_decrease = jnp.abs(relative_decrease(st.value, value))
  iteration = st.iteration + 1
  done = (~finite | (rel_decrease < ftol) |
          (jnp.linalg.norm(grad) < gtol) | (iteration >= max_iterations))
  moved = keep_finite(step, st.x, st.value, st.grad, st.opt_state)
  return _PathState(
      *moved, alpha=alpha, s=s, z=z, filled=filled, iteration=iteration,
      done=done,
      num_evals=st.num_evals + step.num_evals,
      best_elbo=jnp.maximum(elbo, st.best_elbo),
      best=jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b),
                                  gaussian, st.best))


def _single_path(log_density, settings, x0, key):
  """Runs one L-BFGS path from x0; returns its best Gaussian, ELBO, evaluations."""
  history_size, num_elbo_draws, max_iterations, max_linesearch_steps, ftol, \
      gtol = settings
  solver = optax.lbfgs(memory_size=history_size,
                       linesearch=optax.scale_by_zoom_linesearch(
                           max_linesearch_steps=max_linesearch_steps))
  start = lbfgs_start(lambda x: -log_density(x[None])[0], solver, x0)
  dim, dtype = x0.shape[0], x0.dtype
  empty = jnp.zeros((history_size, dim), dtype)
  gaussian0 = _Gaussian(x0, jnp.ones((dim,), dtype),
                        *_inverse_hessian_factors(
                            jnp.ones((dim,), dtype), empty, empty,
                            jnp.zeros(history_size, bool)))
  state = _PathState(
      *start[:4], alpha=jnp.ones((dim,), dtype), s=empty, z=empty,
      filled=jnp.zeros((history_size,), bool),
      iteration=jnp.zeros((), jnp.int32), done=~start.finite,
      num_evals=start.num_evals,
      best_elbo=jnp.asarray(-jnp.inf, dtype), best=gaussian0)
  step = functools.partial(_step, log_density, solver, num_elbo_draws, ftol,
                           gtol, max_iterations, key)
  state = jax.lax.while_loop(lambda st: ~st.done, step, state)
  num_density_evals = state.iteration * num_elbo_draws
  return state.best, state.best_elbo, state.num_evals, num_density_evals


def _run(target_log_prob_fn, space, settings, num_paths, num_draws,
         init_radius, init_loc, key):
  """The whole multi-path computation (traced once per static configuration)."""
  log_density = flat_log_density(target_log_prob_fn, space)
  key_init, key_paths, key_draws, key_resample = jax.random.split(key, 4)
  x0 = init_loc + init_radius * jax.random.uniform(
      key_init, (num_paths, space.dim), init_loc.dtype, -1., 1.)
  best, elbo, evals, density_evals = jax.vmap(functools.partial(
      _single_path, log_density, settings))(
          x0, jax.random.split(key_paths, num_paths))
  x, _ = jax.vmap(_sample, in_axes=(0, 0, None))(
      best, jax.random.split(key_draws, num_paths), num_draws)
  x = x.reshape(num_paths * num_draws, -1)
  # Balance-heuristic weights p / (mean over usable paths of q_j).
  usable = jnp.isfinite(elbo)
  log_mix = jax.nn.logsumexp(
      jax.vmap(_log_prob, in_axes=(0, None))(best, x), axis=0,
      b=usable[:, None] / jnp.maximum(jnp.sum(usable), 1))
  z, ldj = space.forward_and_log_det(x)
  log_p = jax.vmap(lambda zi: call_target(target_log_prob_fn, zi))(z) + ldj
  log_w = jnp.where(jnp.repeat(usable, num_draws), log_p - log_mix, -jnp.inf)
  log_w = jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf)
  smoothed = diagnostics.psis(log_w)
  idx = jax.random.categorical(key_resample, smoothed.log_weights,
                               shape=(num_draws,))
  draws = jax.tree_util.tree_map(lambda leaf: leaf[idx], z)
  top = jnp.argmax(elbo)
  best_one = jax.tree_util.tree_map(lambda leaf: leaf[top], best)
  scale_tril = _scale_tril(best_one)
  num_density = jnp.sum(density_evals) + num_paths * num_draws
  return (full_rank_params(best_one.mu, scale_tril), best_one.mu, scale_tril,
          elbo, draws, smoothed.pareto_k, jnp.sum(evals).astype(jnp.int32),
          num_density.astype(jnp.int32))


def _program(target_log_prob_fn, space, settings, num_paths, num_draws):
  """The jitted `(init_radius, init_loc, key) -> _run(...)` (the target
  traced once)."""
  return jit_once(functools.partial(_run, traced_once(target_log_prob_fn),
                                    space, settings, num_paths, num_draws))


def pathfinder(target_log_prob_fn, event_shape, bijector=None, *, key,
               num_paths: int = 4, max_iterations: int = 1000,
               history_size: int = 6, num_elbo_draws: int = 32,
               num_draws: int = 1000, init_loc=None, init_radius: float = 2.,
               max_linesearch_steps: int = 20, ftol: float = 1e-5,
               gtol: float = 1e-8, dtype=None) -> PathfinderResult:
  """Multi-path Pathfinder variational inference.

  Each of `num_paths` paths starts at `init_loc` (0 by default) plus
  uniform(-init_radius, init_radius) jitter in the unconstrained space (Stan's
  default init) and runs L-BFGS (`optax.lbfgs` with a zoom line search) on
  the negative unconstrained log density until the relative decrease of the
  objective falls below `ftol`, the gradient norm below `gtol`, or
  `max_iterations`. At every iterate `x` it forms `N(x + H grad log p(x), H)`,
  H the diagonal-plus-low-rank L-BFGS inverse Hessian of the last
  `history_size` updates with positive curvature (updates without it are
  skipped, and a non-finite iterate ends the path), and estimates its ELBO
  from `num_elbo_draws` draws. The path's approximation is its best-ELBO
  Gaussian, which needs no finite mode (on a funnel the path diverges and the
  best iterate on the way is kept). Then `num_draws` draws from each path's
  Gaussian are pooled and resampled by Pareto-smoothed importance sampling.
  The importance weights divide by the mixture of the paths' Gaussians (the
  balance heuristic of multiple importance sampling, Veach & Guibas 1995;
  Owen & Zhou 2000) where Stan divides each draw by its own path's Gaussian:
  with near-exact paths whose ratios sit at slightly different levels, the
  per-path ratios give a spurious k-hat (> 1 on a 3-d Gaussian whose paths
  each have k-hat < 0.3); the mixture's do not.

  The paths are vmapped in one compiled program, which is cached: a second
  call with the same target, shapes, bijector and settings does not
  recompile. Runs under `jax.jit` and `jax.vmap` over keys.

  Args:
    target_log_prob_fn: unnormalized log density of one draw (TFP's calling
      convention, as for `vi.fit`).
    event_shape: a shape or pytree of shapes of the latents.
    bijector: None, one bijector, or a pytree of bijectors onto each latent's
      support.
    key: a PRNG key.
    num_paths: Python int >= 1, independent L-BFGS paths.
    max_iterations: Python int >= 1, L-BFGS iterations per path at most.
    history_size: Python int >= 1, L-BFGS memory (Stan's default is 5).
    num_elbo_draws: Python int >= 1, draws per ELBO estimate (K).
    num_draws: Python int >= 1, draws per path for the importance resampling,
      and the number of pooled draws returned.
    init_loc: optional unconstrained center of the starts, `[dim]`, a scalar
      or a pytree of unconstrained arrays like `event_shape`.
    init_radius: half-width (>= 0) of the uniform jitter of the starts.
    max_linesearch_steps: Python int >= 1, zoom line-search trials per
      iteration at most.
    ftol: relative decrease of the objective below which a path stops.
    gtol: gradient norm below which a path stops.
    dtype: floating dtype (default: JAX's default float).

  Returns:
    A `PathfinderResult`.

  Raises:
    TypeError / ValueError: naming the argument, for a bad `key`,
      `target_log_prob_fn` (not callable, or not a scalar on one draw),
      `event_shape`, `bijector` or setting.

  References:
    Zhang, Carpenter, Gelman, Vehtari (2022), "Pathfinder: Parallel
    quasi-Newton variational inference", JMLR 23(306); Stan's
    `pathfinder` method; `blackjax.vi.pathfinder`; Vehtari et al. (2024),
    "Pareto smoothed importance sampling", JMLR 25(72).
  """
  vv.prng_key(key)
  ints = {name: vv.positive_int(name, value) for name, value in (
      ("num_paths", num_paths), ("max_iterations", max_iterations),
      ("history_size", history_size), ("num_elbo_draws", num_elbo_draws),
      ("num_draws", num_draws), ("max_linesearch_steps", max_linesearch_steps))}
  for name, value in (("init_radius", init_radius), ("ftol", ftol),
                      ("gtol", gtol)):
    if not (isinstance(value, (int, float)) and value >= 0):
      raise ValueError(f"{name} must be a float >= 0; got {value!r}.")
  space = bij_lib.latent_space(event_shape, bijector)
  dtype = default_dtype(dtype)
  check_target_on_space(target_log_prob_fn, space, dtype)
  loc0 = initial_loc(space, None, 0. if init_loc is None else init_loc, 0.,
                     dtype)
  settings = (ints["history_size"], ints["num_elbo_draws"],
              ints["max_iterations"], ints["max_linesearch_steps"],
              float(ftol), float(gtol))
  run = compile_cache.program(_program, target_log_prob_fn, space, settings,
                              ints["num_paths"], ints["num_draws"])
  params, loc, scale_tril, elbo, draws, k_hat, evals, density_evals = run(
      jnp.asarray(init_radius, dtype), loc0, key)
  surrogate = full_rank_normal(space, dtype=dtype)
  return PathfinderResult(
      surrogate=surrogate, params=params, loc=loc,
      scale_tril=scale_tril, elbo=elbo, draws=draws, k_hat=k_hat,
      num_grad_evals=evals, num_density_evals=density_evals)
