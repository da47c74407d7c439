"""Laplace approximation at the MAP of the unconstrained log density.

q(u) = N(u; u*, (-H)^-1) with u* the maximizer of the unconstrained log
density `log p(T(u)) + log|det J_T(u)|` (found by `optax.lbfgs`) and H its
Hessian there: NumPyro's AutoLaplaceApproximation, Edward's Laplace. The
result is a `full_rank_normal` surrogate usable everywhere in vi_jax, and the
(loc, scale_tril) pair `vi.whitening.whiten` takes.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from vi_jax.model import bijectors as bij_lib
from vi_jax._src.types import Array, Params
from vi_jax._src import validation as vv
from vi_jax._src.lbfgs import (keep_finite, lbfgs_start, lbfgs_step,
                               relative_decrease)
from vi_jax.model.target import check_target_on_space, flat_log_density
from vi_jax.surrogates.base import Surrogate, default_dtype, initial_loc
from vi_jax.surrogates.full_rank import full_rank_normal, full_rank_params
from vi_jax._src import compile_cache
from vi_jax._src.compile_cache import jit_once
from vi_jax.model.target import traced_once

__all__ = ["LaplaceResult", "laplace"]

# A start jittered by uniform(-2, 2) when a key is given (Stan's default init).
_INIT_RADIUS = 2.
# Newton decrement sqrt(g^T (-H)^-1 g) (the distance of the MAP estimate from
# the mode, in posterior sds) below which the MAP counts as converged.
MAX_NEWTON_DECREMENT = 1e-2


class LaplaceResult(NamedTuple):
  """What `laplace` returns.

  Attributes:
    surrogate: `vi_jax.surrogates.full_rank_normal(event_shape, bijector)`.
    params: its params: N(loc, scale_tril scale_tril^T) in the flat
      unconstrained space.
    loc: `[dim]` the MAP of the unconstrained log density (refined by one
      Newton step).
    scale_tril: `[dim, dim]` lower Cholesky factor of `(-H)^-1`.
    converged: shape (), bool. False when L-BFGS (stopped by a non-finite
      value, no more decrease or `max_iterations`) ended more than 0.01
      posterior sds (Newton decrement) from a stationary point, or the Hessian there is not
      negative definite or is numerically singular (condition number beyond
      1 / (dim * eps) of the dtype): e.g. Neal's funnel, whose only
      stationary point has a Hessian of condition number ~e^(v-range), or an
      unbounded density. Do not trust loc / scale_tril then.
    num_grad_evals: shape (), int32: gradient evaluations of the target (the
      start, every line-search trial, and `dim` for the Hessian).
  """
  surrogate: Surrogate
  params: Params
  loc: Array
  scale_tril: Array
  converged: Array
  num_grad_evals: Array


class _MapState(NamedTuple):
  x: Array             # [dim]
  value: Array         # () -log density at x
  grad: Array          # [dim] its gradient
  opt_state: optax.OptState
  iteration: Array     # () int32
  done: Array          # () bool
  num_evals: Array     # () int32


def _map_step(neg, solver, max_iterations, st: _MapState) -> _MapState:
  """One L-BFGS iteration; stops when the objective no longer changes."""
  step = lbfgs_step(neg, solver, st.x, st.value, st.grad, st.opt_state)
  eps = jnp.finfo(step.x.dtype).eps
  stalled = jnp.abs(relative_decrease(st.value, step.value)) <= 10. * eps
  iteration = st.iteration + 1
  done = (~step.finite | stalled | (jnp.max(jnp.abs(step.grad)) == 0.) |
          (iteration >= max_iterations))
  new = keep_finite(step, st.x, st.value, st.grad, st.opt_state)
  return _MapState(*new, iteration=iteration, done=done,
                   num_evals=st.num_evals + step.num_evals)


def covariance_factor(precision):
  """`(L, regular)`: lower L with L L^T = precision^-1, and whether the
  precision is positive definite and numerically invertible.

  The precision is first scaled to unit diagonal (D^-1 P D^-1, D = sqrt of its
  diagonal): a posterior with sds 0.01 and 10 has a condition number of 1e6
  that the scaling removes, leaving only that of the correlations, so float32
  suffices. Then L = D^-1 chol(J C^-1 J) reversed (J the reversal).
  """
  d = jnp.sqrt(jnp.diag(precision))
  scaled = precision / d[:, None] / d[None, :]
  dim = precision.shape[0]
  eig = jnp.linalg.eigvalsh(scaled)
  eps = jnp.finfo(precision.dtype).eps
  regular = jnp.all(d > 0) & (eig[0] > 0) & (eig[-1] < eig[0] / (dim * eps))
  flipped = jnp.linalg.cholesky(scaled[::-1, ::-1])          # lower M
  m_inv_t = jax.scipy.linalg.solve_triangular(
      flipped, jnp.eye(dim, dtype=precision.dtype), lower=True).T  # upper
  return m_inv_t[::-1, ::-1] / d[:, None], regular


def map_and_hessian(target_log_prob_fn, space, max_iterations, x0):
  """The Laplace approximation from one start; traceable (vmap over starts).

  Args:
    target_log_prob_fn: log density of one draw (as for `laplace`).
    space: the `vi_jax.model.bijectors.LatentSpace` of the latents.
    max_iterations: Python int, L-BFGS iterations at most.
    x0: `[dim]` float, the unconstrained start.

  Returns:
    `(loc [dim], scale_tril [dim, dim], converged shape=() bool,
    num_grad_evals shape=() int32)`, in x0's dtype; the Hessian counts as
    `dim` gradient evaluations. Nothing is raised: a start with a non-finite
    density or gradient gives `converged=False`.

  References: as `laplace` (NumPyro's AutoLaplaceApproximation).
  """
  log_density = flat_log_density(target_log_prob_fn, space)
  neg = lambda x: -log_density(x[None])[0]
  solver = optax.lbfgs()
  start = lbfgs_start(neg, solver, x0)
  state = _MapState(*start[:4], iteration=jnp.zeros((), jnp.int32),
                    done=~start.finite, num_evals=start.num_evals)
  state = jax.lax.while_loop(
      lambda st: ~st.done,
      functools.partial(_map_step, neg, solver, max_iterations), state)
  precision = jax.hessian(neg)(state.x)
  precision = 0.5 * (precision + precision.T)
  dim = x0.shape[0]
  scale_tril, regular = covariance_factor(precision)
  loc = state.x - scale_tril @ (scale_tril.T @ state.grad)  # one Newton step
  loc = jnp.where(jnp.all(jnp.isfinite(loc)), loc, state.x)
  # Judged where it is returned: the Newton decrement at the refined loc.
  grad = jax.grad(neg)(loc)
  decrement = jnp.sqrt(jnp.abs(jnp.sum((scale_tril.T @ grad) ** 2)))
  finite = jnp.isfinite(state.value) & jnp.all(jnp.isfinite(scale_tril)) & (
      jnp.all(jnp.isfinite(grad)))
  converged = finite & regular & (decrement < MAX_NEWTON_DECREMENT)
  return loc, scale_tril, converged, state.num_evals + dim + 1


def _program(target_log_prob_fn, space, max_iterations):
  """The jitted `x0 -> map_and_hessian(...)` (the target traced once)."""
  return jit_once(functools.partial(
      map_and_hessian, traced_once(target_log_prob_fn), space, max_iterations))


def laplace(target_log_prob_fn, event_shape, bijector=None, *, key=None,
            init_loc=None, max_iterations: int = 1000,
            dtype=None) -> LaplaceResult:
  """Laplace approximation at the MAP, in the unconstrained space.

  Maximizes `log p(T(u)) + log|det J_T(u)|` over the flat unconstrained
  vector `u: [dim]` (T the latents' bijectors; the log-det-Jacobian makes the
  MAP that of the unconstrained density, as NumPyro's) by L-BFGS
  (`optax.lbfgs`, zoom line search) until the objective stops decreasing,
  then takes the Hessian H there (`jax.hessian`) and returns
  `N(u* , (-H)^-1)` as a `full_rank_normal` surrogate, with `loc` refined by
  one Newton step. Check `converged` before using it.

  Args:
    target_log_prob_fn: unnormalized log density of one draw (TFP's calling
      convention, as for `vi.fit`).
    event_shape: a shape or pytree of shapes of the latents.
    bijector: None, one bijector, or a pytree of bijectors onto each latent's
      support.
    key: optional PRNG key; when given, the start is jittered by
      uniform(-2, 2) around `init_loc` (Stan's default init).
    init_loc: optional unconstrained start, `[dim]`, a scalar or a pytree of
      unconstrained arrays like `event_shape` (default 0).
    max_iterations: Python int >= 1, L-BFGS iterations at most.
    dtype: floating dtype (default: JAX's default float). The Hessian of a
      badly scaled posterior needs float64 (`jax_enable_x64`).

  Returns:
    A `LaplaceResult`.

  Raises:
    TypeError / ValueError: naming the argument, for a bad `key`,
      `target_log_prob_fn`, `event_shape`, `bijector` or `max_iterations`.

  References:
    numpyro.infer.autoguide.AutoLaplaceApproximation; Tran et al. (2016),
    Edward's `ed.Laplace`; MacKay (2003), "Information Theory, Inference, and
    Learning Algorithms", ch. 27.
  """
  if key is not None:
    vv.prng_key(key)
  max_iterations = vv.positive_int("max_iterations", max_iterations)
  space = bij_lib.latent_space(event_shape, bijector)
  dtype = default_dtype(dtype)
  check_target_on_space(target_log_prob_fn, space, dtype)
  x0 = initial_loc(space, None, 0. if init_loc is None else init_loc, 0.,
                   dtype)
  if key is not None:
    x0 = x0 + jax.random.uniform(key, x0.shape, dtype, -_INIT_RADIUS,
                                 _INIT_RADIUS)
  run = compile_cache.program(_program, target_log_prob_fn, space,
                              max_iterations)
  loc, scale_tril, converged, evals = run(x0)
  return LaplaceResult(
      surrogate=full_rank_normal(space, dtype=dtype),
      params=full_rank_params(loc, scale_tril), loc=loc, scale_tril=scale_tril,
      converged=converged, num_grad_evals=evals)
