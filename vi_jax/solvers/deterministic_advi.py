"""Deterministic ADVI: the ELBO at fixed draws, minimized by L-BFGS.

DADVI (Giordano, Ingram & Broderick 2024) replaces the stochastic objective
of ADVI by its sample-average approximation (SAA): draw the base noise once,
keep it fixed (common random numbers: the same key in
`surrogate.sample_and_log_prob(params, key, M)` at every evaluation), and
minimize the resulting deterministic -ELBO with a deterministic optimizer
(here `optax.lbfgs` with its zoom line search, the iteration of
`vi_jax._src.lbfgs` shared with `vi.laplace` and `vi.pathfinder`, one
`lax.while_loop` in one compile). There is no learning rate to choose, and
the stopping rule is the optimizer's.

The price is a Monte Carlo error that does not average out along the path:
the optimum depends on the M draws. `dadvi` estimates the error of the
objective from the per-draw terms (their sd / sqrt(M)) and that of the fitted
means by DADVI's sandwich estimate and, while either is above its tolerance,
doubles M and re-solves from the previous optimum. A full-rank
family needs M > dim draws (with fewer, the sample covariance of the base
draws is singular and the fixed-draw objective is unbounded below), so the
first M is raised to what the family needs.

`dadvi_linear_response_covariance` gives the linear-response (LR) covariance
of the latents at the optimum (Giordano, Broderick & Jordan 2018), which
corrects the variance underestimation of mean-field.
"""

import math
import warnings
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from vi_jax.model import bijectors as bij_lib
from vi_jax._src.types import Array, Params, PRNGKey, TargetLogProbFn
from vi_jax._src import compile_cache
from vi_jax.solvers.sample_average import default_ftol
from vi_jax.solvers.sample_average import fixed_draw_solve  # noqa: F401 (public)
from vi_jax.solvers.sample_average import objective as _objective
from vi_jax.solvers.sample_average import solve_advance
from vi_jax.solvers.sample_average import solve_start
from vi_jax.criticism.diagnostics import importance_log_weights
from vi_jax._src import validation as vv
from vi_jax.model.target import check_target_on_draw

__all__ = ["DADVIResult", "dadvi", "dadvi_linear_response_covariance",
           "fixed_draw_solve", "min_fixed_draws"]

# The sandwich estimate forms the P x P Hessian: only up to this many params
# (full-rank up to ~60 latent dimensions, mean-field up to 1000).
_MAX_SANDWICH_PARAMS = 2000


class DADVIResult(NamedTuple):
  """What `dadvi` returns."""
  params: Params  # optimized surrogate params
  loss: Array  # shape=(): -ELBO at the fixed draws (the SAA objective) at params
  loss_se: Array  # shape=(): Monte Carlo standard error of that -ELBO estimate
  num_draws: Array  # shape=(), int: fixed draws used at the end (after growing)
  num_grad_evals: Array  # shape=(), int: target gradient evaluations in all
  converged: Array  # shape=(), bool: L-BFGS converged and loss_se <= tol_se


class _Solve(NamedTuple):
  params: Params
  loss: Array  # shape=(), the SAA objective at params
  loss_se: Array  # shape=()
  num_objective_evals: Array  # shape=(), int32: value-and-gradient calls
  num_iterations: Array  # shape=(), int32
  converged: Array  # shape=(), bool: the optimizer's tolerance was met


def _lbfgs_solve(target_log_prob_fn, surrogate, num_draws, max_iterations,
                 gtol, ftol, params, key) -> _Solve:
  """Minimizes the fixed-draw -ELBO by L-BFGS in one `lax.while_loop`.

  The iteration is `vi_jax._src.lbfgs`'s (as `vi.laplace`'s and
  `vi.pathfinder`'s) on the params pytree; `num_objective_evals` counts the
  start and every line-search trial.
  """
  state = solve_start(target_log_prob_fn, surrogate, params, key,
                      num_draws=num_draws, max_iterations=max_iterations)
  state = solve_advance(target_log_prob_fn, surrogate, state, key,
                        num_draws=num_draws, max_iterations=max_iterations,
                        stop_at=max_iterations, gtol=gtol, ftol=ftol)
  _, log_w = importance_log_weights(target_log_prob_fn, surrogate, state.x,
                                    key, num_draws)
  loss = -jnp.mean(log_w)
  loss_se = jnp.std(log_w, ddof=1) / math.sqrt(num_draws)
  return _Solve(state.x, loss, loss_se, state.num_evals, state.iteration,
                state.converged)


def _check_positive_float(name, value, allow_inf=False) -> float:
  try:
    out = float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{name} must be a float > 0; got {value!r}.") from None
  if not out > 0 or (math.isinf(out) and not allow_inf):
    kind = "float > 0 (inf allowed)" if allow_inf else "finite float > 0"
    raise ValueError(f"{name} must be a {kind}; got {value!r}.")
  return out


def _draws_needed(surrogate, params, num_params) -> tuple[int, int]:
  """`(dim, M_min)`: latent size and the fewest draws the family needs.

  A family with p params per latent dimension (2 for mean-field, (dim + 3)/2
  for full-rank, rank + 2 for low-rank) has a bounded fixed-draw objective
  only when the base draws span its scale directions; M_min = 2 p - 2 draws
  gives dim + 1 for full-rank, rank + 2 for low-rank and 2 for mean-field.
  """
  z = jax.eval_shape(lambda p: surrogate.sample_and_log_prob(
      p, jax.random.key(0), 1)[0], params)
  dim = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(z))
  return dim, max(2, math.ceil(2 * num_params / max(dim, 1)) - 2)


def min_fixed_draws(surrogate, params) -> int:
  """The fewest fixed draws for which `surrogate`'s DADVI objective is bounded.

  Args:
    surrogate: a `vi_jax.surrogates.Surrogate`.
    params: its params (arrays or `jax.ShapeDtypeStruct`s), one fit.

  Returns:
    A Python int: dim + 1 for full-rank, rank + 2 for low-rank, 2 for
    mean-field (2 p - 2 for p params per latent dimension).
  """
  num_params = sum(int(np.prod(x.shape))
                   for x in jax.tree_util.tree_leaves(params))
  return _draws_needed(surrogate, params, num_params)[1]


def dadvi(target_log_prob_fn: TargetLogProbFn, surrogate, *, key: PRNGKey,
          num_draws: int = 30, max_draws: int = 480,
          max_iterations: int = 500, init_params: Optional[Params] = None,
          tol_se: float = 1., tol_mean_se: float = 0.1, gtol: float = 1e-6,
          ftol: Optional[float] = None) -> DADVIResult:
  """Deterministic ADVI: fixed draws, L-BFGS, draws grown until precise.

  Minimizes the sample-average approximation of -ELBO,

      loss(params) = -(1/M) sum_m [log p(z_m) - log q(z_m)],
      (z_m, log q(z_m)) = surrogate.sample_and_log_prob(params, key, M)[m],

  with the SAME `key` at every evaluation, by `optax.lbfgs` (zoom line search)
  in one `lax.while_loop`. It stops when the largest gradient entry is at most
  `gtol` or an iteration decreases the loss by at most
  `ftol * max(|loss|, 1)` (scipy's L-BFGS-B rules), or after `max_iterations`.
  Then two Monte Carlo errors are estimated: that of the objective,
  `loss_se = sd_m(log p - log q) / sqrt(M)`, and that of the solution:
  DADVI's sandwich estimate of the standard error of the fitted mean of each
  latent, in units of its fitted sd (largest over the latents; from the
  Hessian H and the per-draw gradients g_m: Cov(params) ~ H^{-1} Cov(g)
  H^{-1} / M; skipped, with a warning, above 2000 params). While
  `loss_se > tol_se` or that ratio is above `tol_mean_se`, and
  `2 M <= max_draws`, M is doubled and the problem re-solved from the
  previous optimum (new draws from the same key). The solution's error falls
  as 1/sqrt(M) (about 1/sqrt(M) of an sd for a Gaussian target, so the
  default 0.1 needs about 100 draws); `loss_se` also measures how badly the
  family fits (the spread of log p - log q), which more draws do not fix.

  `dadvi` is a host-side driver (M is a shape): each solve is one compiled
  program, cached on (target, surrogate, M, settings), so a second call with
  the same arguments does not compile. It is not itself jit/vmap-able.

  Args:
    target_log_prob_fn: unnormalized log density of ONE draw (TFP's calling
      convention, as for `vi.fit`).
    surrogate: a reparameterized `vi_jax.surrogates.Surrogate` (mean-field,
      full-rank, low-rank, a flow, ...).
    key: a PRNG key. The fixed draws use `key` itself (pass the same key and
      `result.num_draws` to `dadvi_linear_response_covariance`); the init,
      when `init_params` is None, uses `jax.random.fold_in(key, 1)`.
    num_draws: M, Python int >= 1, the first number of fixed draws (30 as in
      Giordano et al.). Raised to what the family needs (dim + 1 for
      full-rank, see Raises).
    max_draws: Python int, the largest M the growing may reach.
    max_iterations: Python int >= 1, L-BFGS iterations per solve.
    init_params: optional starting params (structure of `surrogate.init`).
    tol_se: target Monte Carlo standard error of the -ELBO estimate (nats);
      `float("inf")`: not a reason to grow the draws.
    tol_mean_se: target sandwich standard error of the fitted means, in
      fitted sds; `float("inf")`: not estimated (saves about (P + 1) M
      gradient evaluations per solve, P the number of params).
    gtol: gradient tolerance (largest absolute entry).
    ftol: relative decrease tolerance (None: scipy L-BFGS-B's 2.2e-9, or
      the params' machine eps when larger (float32), i.e. stop when an
      iteration no longer decreases the loss measurably).

  Returns:
    `DADVIResult(params, loss, loss_se, num_draws, num_grad_evals,
    converged)`. `num_grad_evals` sums, over the solves, M x the
    value-and-gradient evaluations of the objective (line search included),
    plus (P + 1) M per sandwich estimate (its Hessian and per-draw
    gradients). `converged` is False, with a warning, when the last solve
    hit `max_iterations` or an error is still above its tolerance at
    `max_draws`.

  Raises:
    TypeError / ValueError (before compilation): a bad `key`, `surrogate`
      (or one that is not reparameterized), `num_draws`, `max_draws`,
      `max_iterations`, `tol_se`, `tol_mean_se`, `gtol`, `ftol`,
      `init_params`; `max_draws`
      below the draws the family needs; a target that fails or is not scalar
      on one draw.

  References:
    Giordano, Ingram & Broderick 2024, "Black Box Variational Inference with
    a Deterministic Objective: Faster, More Accurate, and Even More Black
    Box", JMLR 25(18) (github.com/martiningram/dadvi); Burroni, Domke &
    Sheldon 2024, "Sample Average Approximation for Black-Box VI"; Kim, Pasupathy
    & Henderson 2015 (SAA).
  """
  vv.prng_key(key)
  vv.surrogate(surrogate)
  if not getattr(surrogate, "reparameterized", True):
    raise ValueError("surrogate must be reparameterized for dadvi (the "
                     "fixed-draw objective is differentiated through the "
                     "draws); got surrogate.reparameterized=False.")
  if not callable(target_log_prob_fn):
    raise TypeError(
        f"target_log_prob_fn must be callable; got {target_log_prob_fn!r}.")
  m = vv.positive_int("num_draws", num_draws)
  max_m = vv.positive_int("max_draws", max_draws)
  iters = vv.positive_int("max_iterations", max_iterations)
  tol_se = _check_positive_float("tol_se", tol_se, allow_inf=True)
  tol_mean_se = _check_positive_float("tol_mean_se", tol_mean_se,
                                      allow_inf=True)
  gtol = _check_positive_float("gtol", gtol)
  if init_params is None:
    init_params = surrogate.init(jax.random.fold_in(key, 1))
  else:
    vv.surrogate_params("init_params", surrogate, key, init_params)
  flat, _ = ravel_pytree(init_params)
  ftol = default_ftol(init_params) if ftol is None else _check_positive_float(
      "ftol", ftol)
  dim, m_min = _draws_needed(surrogate, init_params, flat.size)
  m = max(m, m_min)
  if m > max_m:
    raise ValueError(
        f"max_draws must be >= {m}: this surrogate ({flat.size} params over "
        f"{dim} latent dimensions) needs at least {m_min} fixed draws and "
        f"num_draws={num_draws}; got max_draws={max_draws}.")
  check_target_on_draw(target_log_prob_fn, surrogate, key, init_params)
  sandwich = math.isfinite(tol_mean_se) and flat.size <= _MAX_SANDWICH_PARAMS
  if math.isfinite(tol_mean_se) and not sandwich:
    warnings.warn(
        f"dadvi: the surrogate has {flat.size} params (> "
        f"{_MAX_SANDWICH_PARAMS}); the Monte Carlo error of the solution "
        "(tol_mean_se) is not estimated, only that of the -ELBO (tol_se).",
        stacklevel=2)
  params, evals = init_params, 0
  while True:
    out = compile_cache.jitted(_lbfgs_solve, target_log_prob_fn, surrogate, m, iters,
                      gtol, ftol)(params, key)
    params, evals = out.params, evals + m * int(out.num_objective_evals)
    ratio = float("nan")
    if sandwich:
      ratio = float(compile_cache.jitted(_mean_se_ratio, target_log_prob_fn, surrogate,
                                m)(params, key))
      evals += (flat.size + 1) * m
    precise = bool(float(out.loss_se) <= tol_se) and (not sandwich or
                                                       ratio <= tol_mean_se)
    if precise or 2 * m > max_m:
      break
    m *= 2
  _warn(out, precise, m, ratio, tol_se, tol_mean_se, max_m, iters)
  int_dtype = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
  return DADVIResult(params=out.params, loss=out.loss, loss_se=out.loss_se,
                     num_draws=jnp.asarray(m, int_dtype),
                     num_grad_evals=jnp.asarray(evals, int_dtype),
                     converged=jnp.asarray(precise and bool(out.converged)))


def _warn(out: _Solve, precise, m, ratio, tol_se, tol_mean_se, max_m,
          iters) -> None:
  if not bool(out.converged):
    warnings.warn(
        f"dadvi: L-BFGS did not converge in max_iterations={iters} "
        f"iterations at M={m} draws; raise max_iterations or check the "
        "target (an unbounded or non-finite objective).", stacklevel=3)
  if not precise:
    warnings.warn(
        f"dadvi: the Monte Carlo error is above tolerance at M={m} draws "
        f"(max_draws={max_m}): -ELBO standard error {float(out.loss_se):.3g} "
        f"(tol_se={tol_se:g}), largest standard error of a fitted mean in "
        f"fitted sds {ratio:.3g} (tol_mean_se={tol_mean_se:g}). Raise "
        "max_draws; a large -ELBO error with a small mean error means the "
        "family fits the target poorly (wide spread of log p - log q).",
        stacklevel=3)


def _unconstrained_mean_fn(surrogate, num_draws, key, bijector):
  """`params -> [dim]`: the mean over the fixed draws of the unconstrained
  (flattened) latents."""

  def mean(params):
    z, _ = surrogate.sample_and_log_prob(params, key, num_draws)
    if bijector is None:
      u = jnp.concatenate([jnp.reshape(leaf, (num_draws, -1)) for leaf in
                           jax.tree_util.tree_leaves(z)], axis=1)
    else:
      event_shape = jax.tree_util.tree_map(lambda x: tuple(x.shape[1:]), z)
      u, _ = bij_lib.latent_space(event_shape, bijector).inverse_and_log_det(z)
    return jnp.mean(u, axis=0)

  return mean


def _hessian_and_jacobian(target_log_prob_fn, surrogate, num_draws, bijector,
                          params, key):
  """`(H [P, P], J [dim, P])`: the Hessian of the fixed-draw -ELBO in the
  flattened params, and the Jacobian of the mean of the flattened latents
  over the fixed draws (unconstrained when `bijector` is given)."""
  flat, unravel = ravel_pytree(params)
  objective = _objective(target_log_prob_fn, surrogate, num_draws, key)
  hessian = jax.hessian(lambda f: objective(unravel(f)))(flat)
  mean_fn = _unconstrained_mean_fn(surrogate, num_draws, key, bijector)
  return hessian, jax.jacfwd(lambda f: mean_fn(unravel(f)))(flat)


def _lr_covariance(target_log_prob_fn, surrogate, num_draws, bijector, params,
                   key):
  hessian, jac = _hessian_and_jacobian(target_log_prob_fn, surrogate,
                                       num_draws, bijector, params, key)
  cov = jac @ jnp.linalg.solve(hessian, jac.T)
  return (cov + cov.T) / 2


def _mean_se_ratio(target_log_prob_fn, surrogate, num_draws, params, key):
  """Largest Monte Carlo standard error of the fitted mean of a latent, in
  units of its fitted sd: DADVI's sandwich estimate.

  The optimum's error is params_M - params* ~ -H^{-1} gbar, gbar the mean of
  the per-draw gradients, so the fitted means zbar (over the fixed draws)
  have covariance A V A' / M, A = J H^{-1}, V the covariance of the per-draw
  gradients (Giordano, Ingram & Broderick 2024, sec. 4).
  """
  flat, unravel = ravel_pytree(params)
  hessian, jac = _hessian_and_jacobian(target_log_prob_fn, surrogate,
                                       num_draws, None, params, key)

  def terms(f):
    return -importance_log_weights(target_log_prob_fn, surrogate, unravel(f),
                                   key, num_draws)[1]

  grads = jax.jacfwd(terms)(flat)  # [M, P]: per-draw gradients
  proj = (grads - jnp.mean(grads, axis=0)) @ jnp.linalg.solve(hessian, jac.T)
  se = jnp.sqrt(jnp.sum(jnp.square(proj), axis=0) / (num_draws *
                                                       (num_draws - 1)))
  z, _ = surrogate.sample_and_log_prob(params, key, num_draws)
  z = jnp.concatenate([jnp.reshape(leaf, (num_draws, -1)) for leaf in
                       jax.tree_util.tree_leaves(z)], axis=1)
  return jnp.max(se / jnp.std(z, axis=0, ddof=1))


def dadvi_linear_response_covariance(target_log_prob_fn: TargetLogProbFn,
                                     surrogate, params: Params, *,
                                     key: PRNGKey, num_draws: int,
                                     bijector=None) -> Array:
  """Linear-response covariance of the latents at a DADVI optimum.

  Perturb the target by a linear term, log p_t(u) = log p(u) + t^T u; the
  optimum params move, and the covariance of the posterior is the response
  of the fitted mean: Cov_LR = d E_q*[u] / dt at t = 0 (Giordano, Broderick &
  Jordan 2018). By the implicit function theorem on the fixed-draw objective
  (loss = -ELBO, H its Hessian in the flattened params at the optimum),

      Cov_LR = J H^{-1} J^T,   J = d ubar / d params   [dim, P],

  where ubar is the mean of the unconstrained latents over the same fixed
  draws (the DADVI estimate of E_q[u]). For mean-field this is what
  corrects its variance underestimation; on a Gaussian target it equals the
  exact posterior covariance for any Gaussian family and any draws (the
  objective separates into a quadratic in ubar and a term free of it).
  Replacing ubar by the exact mean (the loc block, as martiningram/dadvi's
  "top left corner of H^{-1}") differs by O(1/sqrt(M)).

  H is formed densely with `jax.hessian` (P x P; P = 2 dim for mean-field),
  so this is meant for mean-field or moderate full-rank problems.

  Args:
    target_log_prob_fn: unnormalized log density of ONE draw.
    surrogate: the reparameterized surrogate `dadvi` fitted.
    params: the DADVI optimum (`DADVIResult.params`).
    key: the key given to `dadvi` (its fixed draws).
    num_draws: `DADVIResult.num_draws` (a Python int or a concrete array).
    bijector: None when the surrogate's draws are the unconstrained latents
      (no bijector); else the bijector (pytree) the surrogate was built with,
      to map draws back to the unconstrained space.

  Returns:
    `[dim, dim]`: the covariance of the flattened unconstrained latents (in
    `jax.tree_util` leaf order of the latents, each leaf raveled).

  Raises:
    TypeError / ValueError: a bad `key`, `surrogate`, `num_draws`, or
      `params` whose structure differs from `surrogate.init`.

  References:
    Giordano, Broderick & Jordan 2018, "Covariances, Robustness, and
    Variational Bayes", JMLR 19(51); Giordano, Ingram & Broderick 2024,
    JMLR 25(18), sec. on linear response.
  """
  vv.prng_key(key)
  vv.surrogate(surrogate)
  if not callable(target_log_prob_fn):
    raise TypeError(
        f"target_log_prob_fn must be callable; got {target_log_prob_fn!r}.")
  num_draws = vv.positive_int(
      "num_draws", int(num_draws) if hasattr(num_draws, "shape") and
      jnp.ndim(num_draws) == 0 else num_draws)
  vv.surrogate_params("params", surrogate, key, params)
  return compile_cache.jitted(_lr_covariance, target_log_prob_fn, surrogate, num_draws,
                     bijector)(params, key)
