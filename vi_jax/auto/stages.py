"""The stages of `vi.auto_fit`: the Laplace check, the Pathfinder start and
one family's fits.

A stage fits `num_restarts` independent copies of one whitened family
(`vi.whitening.whiten` over Pathfinder's `loc`, `scale_tril`) and evaluates
each (ELBO, PSIS k-hat, PSIS-corrected moments) from the host over the
target's `CompiledDensity` (compiled once per call), by the target-free
programs of `vi_jax.auto.stage_programs`. Gaussian families are fitted by
DADVI (fixed draws, scipy's L-BFGS-B); flows by Adam at a fixed budget (a
warmup-cosine schedule). The Laplace stage runs L-BFGS-B to the MAP and one
compiled Hessian. `vi_jax.auto.verdict` turns the numbers into a verdict.
"""

import math
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from vi_jax.criticism import diagnostics
from vi_jax.auto import verdict
from vi_jax._src import compile_cache
from vi_jax._src.types import Array, Params
from vi_jax.surrogates import Surrogate
from vi_jax.surrogates import flows
from vi_jax.surrogates import full_rank
from vi_jax.surrogates import low_rank
from vi_jax.surrogates import mean_field
from vi_jax.auto.verdict import StageRecord
from vi_jax._src import rng
from vi_jax._src import time_budget
from vi_jax.auto import stage_programs
from vi_jax.auto.stage_programs import FLOW_SAMPLE_SIZE  # noqa: F401  (re-export)
from vi_jax.solvers import deterministic_advi
from vi_jax.auto import pathfinder_start
from vi_jax.surrogates import laplace_approximation

LOW_RANK_ABOVE = 200  # full_rank becomes low_rank_normal above this many dims
GROWTH = 4  # DADVI's one growth of the fixed draws
DRAWS_FACTOR = 8  # DADVI's first fixed draws: this times (M_min - 1)
# A returned fit's k-hat within REFINE_WINDOW of PSIS_USABLE (the threshold
# that decides whether `AutoFitResult.sample` resamples) is re-estimated from
# REFINE_FACTOR times the verdict's draws (`refine_k_hat`).
PSIS_USABLE = 0.7
REFINE_WINDOW = 0.1
REFINE_FACTOR = 4

LAPLACE_MAX_DIM = 2000  # above: no Laplace stage (a dense [dim, dim] Hessian)
LAPLACE_MAX_ITERATIONS = 1000  # L-BFGS iterations to the MAP (vi.laplace's)
# A Laplace fit that fails but has k-hat below this whitens the ladder in
# place of Pathfinder's start (Yao et al.'s "usable": q covers p's bulk).
WHITEN_BY_LAPLACE_K_HAT = 0.7
_INIT_RADIUS = 2.  # the Laplace stage's starts: uniform(-2, 2) (Stan's init)



class _Rung(NamedTuple):
  """One family of the ladder: how to build it and how to fit it."""
  family: str
  method: str
  make: Callable[..., Surrogate]  # whitening's make_surrogate
  kwargs: tuple  # its extra keyword arguments, as sorted (name, value) pairs
  fitter: str  # "dadvi" or "adam"


def ladder(families: Sequence[str], dim: int) -> list[_Rung]:
  rungs = {
      "mean_field": _Rung("mean_field", "DADVI, L-BFGS",
                          mean_field.mean_field_normal, (), "dadvi"),
      "full_rank": (
          _Rung("full_rank", "DADVI, L-BFGS", full_rank.full_rank_normal, (),
                "dadvi") if dim <= LOW_RANK_ABOVE else
          _Rung("low_rank", "DADVI, L-BFGS", low_rank.low_rank_normal,
                (("rank", max(1, round(math.sqrt(dim)))),), "dadvi")),
      "flow": _Rung("flow", "Adam, warmup-cosine", flows.real_nvp, (),
                    "adam"),
  }
  return [rungs[f] for f in families]


class Fit(NamedTuple):
  """A stage's result: its record and its best fit (None for the Pathfinder
  start and for stages not run)."""
  record: StageRecord
  surrogate: Optional[Surrogate] = None
  params: Optional[Params] = None
  draws: Optional[Callable] = None  # stage_programs.fit_draws of the fit


class _StageOut(NamedTuple):
  """A stage program's output; leading [num_restarts] where marked [R]."""
  params: Params  # [R]
  elbo: Array  # [R], mean(log p - log q) over the evaluation draws
  k_hat: Array  # [R], PSIS k-hat of the same draws
  num_grad_evals: Array  # [R]
  mean_gap: Array  # shape=(), see verdict.agreement
  sd_gap: Array  # shape=()


class Config(NamedTuple):
  """Settings a stage program depends on (hashable)."""
  num_draws: int  # draws for k-hat, ELBO and moments
  dadvi_draws: int  # DADVI's first number of fixed draws
  max_dadvi_draws: int  # the most fixed draws DADVI grows to
  max_iterations: int  # L-BFGS iterations per DADVI solve
  flow_steps: int  # Adam steps per flow fit
  dtype: Optional[str]  # the families' float dtype (None: JAX's default)
  max_k_hat: float  # a stage's k-hat must be below min(this, S threshold)


def _take(tree, i: int):
  """Entry `i` of every leaf's leading axis, indexed on the host (no XLA
  program per leaf shape)."""
  return jax.tree_util.tree_map(lambda x: jax.device_put(np.asarray(x)[i]),
                                tree)


class _Mode(NamedTuple):
  """One Laplace approximation (numpy) and how it was reached."""
  loc: np.ndarray  # [dim]
  scale_tril: np.ndarray  # [dim, dim]
  converged: bool
  num_grad_evals: int
  out_of_time: bool  # the deadline stopped L-BFGS before it settled


def _laplace_at(density, x0, at: float) -> _Mode:
  """One Laplace approximation from the start `x0 [dim]`.

  The MAP by scipy's L-BFGS-B over the compiled target (stopping when the
  objective no longer changes: a relative decrease of 10 eps, or at the
  deadline `at`), the Hessian there, one Newton step from it, judged by the
  Newton decrement at the returned loc (`vi.laplace`'s rule, NumPyro's
  AutoLaplaceApproximation).
  """
  evals, stop = [0], time_budget.ScipyDeadline(at)

  def neg(x):
    evals[0] += 1
    value, grad = density.value_and_grad_one(x)
    if not (math.isfinite(value) and np.all(np.isfinite(grad))):
      return math.inf, np.zeros_like(x)
    return -value, -np.asarray(grad, np.float64)

  eps = float(np.finfo(density.dtype).eps)
  result = scipy.optimize.minimize(
      neg, np.asarray(x0, np.float64), jac=True, method="L-BFGS-B",
      callback=stop,
      options=dict(maxiter=LAPLACE_MAX_ITERATIONS, ftol=10. * eps, gtol=0.))
  mode = result.x.astype(density.dtype)
  precision = -density.hessian(mode)
  loc, scale_tril, regular = compile_cache.quick_jitted(_newton_step)(
      precision, mode, result.jac.astype(density.dtype))
  loc, scale_tril = np.asarray(loc), np.asarray(scale_tril)
  value, grad = density.value_and_grad_one(loc)
  decrement = float(np.sqrt(np.abs(np.sum((scale_tril.T @ grad) ** 2))))
  finite = math.isfinite(value) and np.all(np.isfinite(grad)) and np.all(
      np.isfinite(scale_tril)) and math.isfinite(result.fun)
  converged = bool(finite and regular and decrement <
                   laplace_approximation.MAX_NEWTON_DECREMENT)
  return _Mode(loc, scale_tril, converged and not stop.stopped,
               evals[0] + density.dim + 1, stop.stopped)


def _newton_step(precision, mode, neg_grad):
  """`(loc, scale_tril, regular)`: the covariance factor of the (symmetrized)
  precision and one Newton step from the mode (target-free)."""
  precision = 0.5 * (precision + precision.T)
  scale_tril, regular = laplace_approximation.covariance_factor(precision)
  loc = mode - scale_tril @ (scale_tril.T @ neg_grad)
  loc = jnp.where(jnp.all(jnp.isfinite(loc)), loc, mode)
  return loc, scale_tril, regular


_laplace_params = jax.vmap(full_rank.full_rank_params)  # [R] locs, scale_trils
_LAPLACE_RUNG = _Rung("laplace", "Laplace, L-BFGS + Hessian",
                      full_rank.full_rank_normal, (), "laplace")


def laplace_stage(density, space, config, key, num_restarts, at=math.inf):
  """Stage 0: Laplace approximations at the MAP from `num_restarts` starts.

  Cheap where the posterior is close to Gaussian (a MAP by L-BFGS and one
  Hessian, `dim` gradient evaluations), and exact on a Gaussian target however
  badly scaled; judged like every family (PSIS k-hat, agreement of the fits:
  different modes disagree). Returns a `Fit`: a `full_rank_normal` over the
  latents. Each L-BFGS run stops at the deadline `at` (seconds on
  `vi_jax._src.time_budget`'s clock); a stage so cut short does not pass, and
  its note says so.
  """
  t0 = time.perf_counter()
  start_key, eval_key = rng.split(key)
  # The first start is the origin of the unconstrained space, the others
  # are jittered around it (Stan's and NumPyro's uniform(-2, 2) init).
  starts = rng.host_generator(start_key).uniform(
      -_INIT_RADIUS, _INIT_RADIUS, (num_restarts, space.dim))
  starts[0] = 0.
  fits = []
  for x0 in starts:  # a restart the deadline left out is not run
    if not (fits and fits[-1].out_of_time):
      fits.append(_laplace_at(density, x0, at))
  params = compile_cache.quick_jitted(_laplace_params)(
      np.stack([f.loc for f in fits]), np.stack([f.scale_tril for f in fits]))
  origin = np.zeros(space.dim, density.dtype)
  identity = np.eye(space.dim, dtype=density.dtype)
  elbo, k_hat, mean_gap, sd_gap = stage_programs.evaluate(
      density, _LAPLACE_RUNG, config, origin, identity, params, eval_key)
  evals = np.array([f.num_grad_evals for f in fits])
  out = _StageOut(params, elbo, k_hat, evals, mean_gap, sd_gap)
  threshold = _threshold(config)
  judged = _judge(out, threshold)
  note = judged.note
  if not fits[judged.best].converged:
    note += " [no regular mode: L-BFGS did not settle or the Hessian is " \
            "not negative definite]"
  out_of_time = fits[-1].out_of_time
  if out_of_time:  # not settled, and fewer restarts than asked: no pass
    judged = judged._replace(passed=False)
    note += (f" [stopped: {verdict.TIME_BUDGET_SPENT} in L-BFGS to the MAP, "
             f"{len(fits)} of {num_restarts} starts run]")
  record = _record("laplace", _LAPLACE_RUNG.method, judged, threshold,
                   judged.num_grad_evals, t0, note)
  surrogate = full_rank.full_rank_normal(space, dtype=config.dtype)
  return Fit(record._replace(out_of_time=out_of_time), surrogate,
             _take(out.params, judged.best),
             stage_programs.fit_draws(_LAPLACE_RUNG, config, origin, identity))


class _Judged(NamedTuple):
  """A stage program's output on the host: its best fit and the verdict."""
  best: int  # index of the highest finite ELBO (0 when none is finite)
  k_hat: float  # of the best fit
  elbo: float  # of the best fit
  mean_gap: float
  sd_gap: float
  num_grad_evals: int  # of every fit
  passed: bool
  note: str


def _threshold(config: Config) -> float:
  return min(config.max_k_hat,
             diagnostics.pareto_k_threshold(config.num_draws))


def _judge(out: _StageOut, threshold: float) -> _Judged:
  """One transfer of the scalars (params stay on the device) and the verdict."""
  elbo, k_hats, n, mean_gap, sd_gap = jax.device_get(
      (out.elbo, out.k_hat, out.num_grad_evals, out.mean_gap, out.sd_gap))
  best = max(range(len(elbo)), key=lambda i: elbo[i] if math.isfinite(
      elbo[i]) else -math.inf)
  passed, note = verdict.stage_verdict(float(k_hats[best]), threshold,
                                       float(mean_gap), float(sd_gap))
  return _Judged(best, float(k_hats[best]), float(elbo[best]), float(mean_gap),
                 float(sd_gap), int(np.sum(n)), passed, note)


def _record(family, method, judged: _Judged, threshold, num_grad_evals, t0,
            note) -> StageRecord:
  return StageRecord(
      family=family, method=method, k_hat=judged.k_hat,
      k_hat_threshold=threshold, elbo=judged.elbo, mean_gap=judged.mean_gap,
      sd_gap=judged.sd_gap, num_grad_evals=num_grad_evals,
      wall_time=time.perf_counter() - t0, passed=judged.passed, note=note)


def start(density, key, at: float = math.inf):
  """Stage 1: Pathfinder's best-ELBO Gaussian: `(loc, scale_tril, record)`
  (`vi_jax.auto.pathfinder_start`, run from the host over the compiled
  target; its paths stop at the deadline `at`)."""
  t0 = time.perf_counter()
  pf = pathfinder_start.pathfinder_start(density, key, deadline=at)
  note = (f"start: whitens the ladder (+{pf.num_density_evals:,} density "
          "evals)")
  if pf.out_of_time:
    note += f" [stopped: {verdict.TIME_BUDGET_SPENT}]"
  record = StageRecord(
      family="pathfinder", method="Pathfinder, L-BFGS", k_hat=pf.k_hat,
      k_hat_threshold=math.nan, elbo=float(np.max(pf.elbo)),
      mean_gap=math.nan, sd_gap=math.nan, num_grad_evals=pf.num_grad_evals,
      wall_time=time.perf_counter() - t0, passed=False, note=note,
      out_of_time=pf.out_of_time)
  return (jax.device_put(np.asarray(pf.loc, density.dtype)),
          jax.device_put(np.asarray(pf.scale_tril, density.dtype)), record)


def _fixed_draws(rung, config, surrogate, params0) -> int:
  """DADVI's first number of fixed draws: several times what the family needs.

  A family is bounded with M_min fixed draws (dim + 1 for full-rank), but
  overfits them: on German credit (25 dims) full-rank DADVI has k-hat 1.14
  with 2 dim draws, 0.69 with 4 dim, 0.43 (passes) with 8 dim. So it starts
  at `DRAWS_FACTOR (M_min - 1)` (8 dim for full-rank), capped at
  `max_dadvi_draws`, and one solve usually suffices (one compile).
  """
  if rung.fitter != "dadvi":
    return 0
  m_min = deterministic_advi.min_fixed_draws(
      surrogate, jax.tree_util.tree_map(
          lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), params0))
  return max(config.dadvi_draws, m_min,
             min(DRAWS_FACTOR * (m_min - 1), config.max_dadvi_draws))


def run_stage(density, space, rung, config, loc, scale_tril, key,
              num_restarts, at: float = math.inf):
  """Stage 2: R vmapped fits of one family: `(record, surrogate, params)`.

  The fits run in chunks until done or the deadline `at` (seconds on
  `vi_jax._src.time_budget`'s clock; inf for none), then are evaluated
  (`vi_jax.auto.stage_programs`); fits cut short by the deadline are judged
  as they are and the note says so. A DADVI stage whose fits pass k-hat but
  disagree re-solves ONCE from their optimum with `GROWTH` times the fixed
  draws (at most `max_dadvi_draws`; not past the deadline): the disagreement
  of fits on independent draw sets is the Monte Carlo error of DADVI's
  objective.
  """
  t0 = time.perf_counter()
  surrogate = stage_programs.whitened(rung, config, space, loc, scale_tril)
  fit_key, eval_key = rng.split(key)
  fit_keys = rng.split_array(fit_key, num_restarts)
  params = stage_programs.init_params(space, rung, config, loc, scale_tril,
                                      fit_keys)
  m, evals, grown = _fixed_draws(rung, config, surrogate, params), 0, False
  threshold = _threshold(config)
  fit_until = at - _evaluation_reserve(density, rung, config, loc, scale_tril,
                                       params, eval_key, at)
  while True:
    fitted = stage_programs.fit(density, rung, config, m, loc, scale_tril,
                                params, fit_keys, fit_until)
    params, evals = fitted.params, evals + fitted.num_grad_evals
    elbo, k_hat, mean_gap, sd_gap = stage_programs.evaluate(
        density, rung, config, loc, scale_tril, params, eval_key)
    judged = _judge(_StageOut(params, elbo, k_hat, fitted.num_grad_evals,
                              mean_gap, sd_gap), threshold)
    # More fixed draws help only fits that pass k-hat but disagree.
    grow = (judged.k_hat < threshold and not (
        judged.mean_gap <= verdict.MEAN_TOL and
        judged.sd_gap <= verdict.SD_TOL))
    if (judged.passed or not grow or grown or fitted.out_of_time or
        time_budget.seconds_left(at) <= 0 or
        not 0 < m < config.max_dadvi_draws):
      break
    m, grown = min(GROWTH * m, config.max_dadvi_draws), True
  record = _record(rung.family, rung.method, judged, threshold, evals, t0,
                   judged.note + _fit_note(rung, config, m, fitted))
  record = record._replace(out_of_time=fitted.out_of_time)
  return Fit(record, surrogate, _take(params, judged.best),
             stage_programs.fit_draws(rung, config, loc, scale_tril))


def _evaluation_reserve(density, rung, config, loc, scale_tril, params,
                        eval_key, at) -> float:
  """Seconds to keep for the stage's evaluation under a deadline
  (`stage_programs.evaluation_seconds`, its programs compiled on the way);
  0 without a deadline (nothing is run)."""
  if math.isinf(at):
    return 0.
  return stage_programs.evaluation_seconds(density, rung, config, loc,
                                           scale_tril, params, eval_key)


def _fit_note(rung, config, m, fitted) -> str:
  """How the stage's fits were run, and whether the deadline cut them short."""
  if rung.fitter == "dadvi":
    note = f" [DADVI, {m} fixed draws]"
  else:
    note = (f" [{config.flow_steps} Adam steps x "
            f"{stage_programs.FLOW_SAMPLE_SIZE} draws]")
  if fitted.out_of_time:
    unit = "L-BFGS iterations" if rung.fitter == "dadvi" else "Adam steps"
    note += (f" [stopped: {verdict.TIME_BUDGET_SPENT} after "
             f"{fitted.iterations} of {fitted.max_iterations} {unit}]")
  return note


def refine_k_hat(density, fit: Fit, config: Config, key) -> StageRecord:
  """The fit's record with its k-hat re-estimated from more draws when it is
  near 0.7.

  k-hat from S draws has a standard error of about (1 + k) / sqrt(3 sqrt(S))
  (0.08 at S = 16,000 and k = 0.6, 0.06 at 64,000). Within `REFINE_WINDOW`
  of `PSIS_USABLE`, one estimate decides a coin-flip: the flow auto_fit
  returns on Neal's funnel read 0.64 to 0.91 from eight sets of 16,000
  draws, 0.77 to 0.99 from 64,000; eight schools' flow 0.49 to 0.77 and
  0.57 to 0.75 (0.58 to 0.68 from 128,000). So the returned fit's k-hat is
  then estimated again from `REFINE_FACTOR * num_draws` fresh draws (one
  more compiled program, run once), and that estimate replaces the record's;
  the note keeps both. Passed records are returned as they are.

  Args:
    density: the target's `CompiledDensity`.
    fit: the stage's `Fit` (one fit's params, no restart axis).
    config: the stage `Config` (its `num_draws`).
    key: a PRNG key for the new draws.

  Returns:
    A `StageRecord`: `k_hat` a Python float, `wall_time` (seconds) including
    the new estimate's compile and run, `note` extended.

  Raises:
    Nothing of its own; errors of the target or surrogate on the new draws
    propagate.

  References:
    Vehtari, Simpson, Gelman, Yao, Gabry (2024), Pareto smoothed importance
    sampling, JMLR 25(72) (k-hat and its sample-size behaviour); Yao et al.
    (2018) for k-hat as a VI diagnostic.
  """
  record = fit.record
  if record.passed or not abs(record.k_hat - PSIS_USABLE) < REFINE_WINDOW:
    return record
  t0 = time.perf_counter()
  n = REFINE_FACTOR * config.num_draws
  x, log_q = fit.draws(fit.params, key, n)
  k_hat = float(np.asarray(stage_programs.judge_draws(
      density, x[None], log_q[None])[1])[0])
  return record._replace(
      k_hat=k_hat, wall_time=record.wall_time + time.perf_counter() - t0,
      note=record.note + f" [k-hat {k_hat:.2f} from {n:,} draws, "
      f"{record.k_hat:.2f} from {config.num_draws:,}]")
