"""`vi.auto_fit`: a fit that chooses its start, scaling, step size, stopping and
family, then says whether to trust it.

    result = vi.auto_fit(target_log_prob_fn, event_shape, bijector, key=key)
    z = result.sample(key, 1000)      # pytree like event_shape, leading [1000]
    result.reliable, result.k_hat, result.family; print(result.summary())

Stages:

0. **Laplace** (`vi.laplace`: the MAP by L-BFGS from `num_restarts` jittered
   starts, the Hessian there), judged like every family below. It costs a few
   hundred gradient evaluations and is exact on a Gaussian target however
   badly scaled, so near-Gaussian posteriors (regressions) stop here. Skipped
   above 2,000 unconstrained dims (a dense Hessian).
1. **Start**: the Laplace fit's `loc` and `scale_tril` when it is usable
   (k-hat < 0.7), else `vi.pathfinder` (Zhang et al. 2022): L-BFGS paths
   from jittered starts; the best-ELBO Gaussian along them. No finite mode is
   needed (a funnel's is degenerate: the best-ELBO iterate is used). When
   both ran, the one with the higher ELBO whitens the ladder (a skewed
   logistic regression: Laplace's k-hat 0.77, but its ELBO -28.5 against
   Pathfinder's -37.0).
2. **Family ladder in whitened coordinates** (`vi.whitening.whiten`: every
   family is fitted over u with `z_unc = loc + scale_tril @ u`, so the
   optimizer sees a problem scaled close to N(0, I)): mean-field, then
   full-rank (low-rank above 200 dims), then a RealNVP flow. Gaussian families
   are fitted by DADVI (fixed draws, L-BFGS: no learning rate); the flow by
   Adam at a fixed budget (warmup-cosine schedule; whitening makes one
   schedule serve every target). A stage's `num_restarts` independent fits
   and their PSIS k-hats, ELBOs and moments are run from the host
   (`vi_jax.auto.stage_programs`): the target is compiled once per call's
   target, space and dtype (`vi_jax.model.compiled_density`: one batched
   value-and-gradient kernel), scipy's L-BFGS-B drives the Laplace MAP, the
   Pathfinder paths (`vi_jax.auto.pathfinder_start`) and the DADVI solves
   over it, and the stages' own programs (draws, chain rule, PSIS) never
   call the target, so they compile in a fraction of a second, once per
   family and dim. The flow's Adam steps are one loop program with the
   target traced in. The host checks `max_time` between iterations.
3. **Verdict** (`vi_jax.auto.verdict`): a stage passes when its best fit's PSIS
   k-hat is below `min(max_k_hat, 0.7, 1 - 1/log10(S))` (max_k_hat 0.5 by
   default) and the independent fits agree
   (means within 0.1 sd, sds within 10%). The ladder stops at the first family
   that passes. When none passes, the highest-ELBO fit comes back with
   `reliable=False` and a warning that says what failed and what to try;
   its k-hat, when within 0.1 of 0.7, is first estimated again from
   `4 num_draws` draws (`auto_stages.refine_k_hat`: one estimate from
   `num_draws` lands on the wrong side of 0.7 too often there).
4. **Posterior**: `sample` resamples q's draws by their Pareto-smoothed
   importance weights when k-hat < 0.7 (PSIS-corrected), else returns q's
   draws.

References:
  Zhang, Carpenter, Gelman, Vehtari (2022), Pathfinder, JMLR 23(306).
  Giordano, Ingram, Broderick (2024), DADVI, JMLR 25(18).
  Yao, Vehtari, Simpson, Gelman (2018), "Yes, but did it work?", ICML.
"""

import math
import warnings
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from vi_jax.auto import stage_progress
from vi_jax.auto import stages as auto_stages
from vi_jax.model import bijectors as bij_lib
from vi_jax.criticism import diagnostics
from vi_jax.auto import verdict
from vi_jax._src import compile_cache
from vi_jax._src import rng
from vi_jax._src import time_budget
from vi_jax._src.types import Params, PRNGKey, PyTree
from vi_jax._src import validation as vv
from vi_jax.model.compiled_density import compiled_density
from vi_jax.surrogates import Surrogate
from vi_jax.surrogates import mean_field
from vi_jax.surrogates.full_rank import full_rank_scale_tril
from vi_jax.surrogates.base import check_sample_size
from vi_jax.model.target import check_target_on_draw
from vi_jax.auto.verdict import StageRecord
from vi_jax.auto.verdict import TIME_BUDGET_SPENT

__all__ = ["AutoFitResult", "StageRecord", "auto_fit"]

FAMILIES = ("laplace", "mean_field", "full_rank", "flow")
_PSIS_OK = auto_stages.PSIS_USABLE  # k-hat below which `sample` resamples
# The default wall-clock budget: a default call returns within about this
# many seconds (never a hang), unreliable and saying so if the budget cut it
# short. Measured (benchmarks/RESULTS.md): 2-79 s on the 29 benchmark
# posteriors of 2 to 501 dims, one CPU core each.
DEFAULT_MAX_TIME = 100.
_REFINE_KEY = 4  # fold_in(key, this): the draws of `auto_stages.refine_k_hat`




class AutoFitResult(NamedTuple):
  """What `vi.auto_fit` returns.

  Attributes:
    surrogate: the chosen fit's `Surrogate` (whitened family over the latents).
    params: its params.
    family: "laplace", "mean_field", "full_rank", "low_rank" or "flow".
    k_hat: PSIS k-hat of the chosen fit (Python float).
    reliable: True when the chosen family passed (k-hat and agreement).
    num_grad_evals: target value-and-gradient evaluations of every stage,
      start included. Evaluations of the log density alone (Pathfinder's
      ELBO draws, the `num_draws` draws of every verdict) are not counted,
      as Blackjax's pathfinder and `benchmarks/` count them; the Pathfinder
      row of `history` gives its own in its note.
    history: tuple of `StageRecord`, every stage tried, in order.
    target_log_prob_fn: the target (for PSIS resampling in `sample`).
    space: the `LatentSpace` of the latents.
    density: the target's `CompiledDensity` (its log density and gradient,
      compiled once: `sample` evaluates the PSIS weights with it).
    draws: `(params, key, n) -> (x [n, dim], log_q [n])`, the fit's draws in
      the flat unconstrained coordinates (numpy), by programs compiled once
      per family and dim.
  """
  surrogate: Surrogate
  params: Params
  family: str
  k_hat: float
  reliable: bool
  num_grad_evals: int
  history: tuple
  target_log_prob_fn: Callable[..., Any]
  space: Any = None
  density: Any = None
  draws: Any = None

  def sample(self, key: PRNGKey, n: int) -> PyTree:
    """`n` posterior draws: PSIS-resampled from q when k-hat < 0.7.

    With k-hat < 0.7, `4 n` draws of q are resampled (with replacement, so
    some repeat) by their Pareto-smoothed importance weights, which corrects
    q's moments towards p's (Yao et al. 2018, Sec. 3); otherwise `n` plain
    draws of q (and k-hat says not to trust them).

    Args:
      key: a PRNG key.
      n: Python int >= 1.

    Returns:
      A pytree like `event_shape` with leading `[n]`, in each latent's support.
    """
    n = check_sample_size(n)
    draw_key, pick_key = rng.split(key)
    if not self.k_hat < _PSIS_OK:
      x, _ = self.draws(self.params, draw_key, n)
      return compile_cache.quick_jitted(_to_latents, self.space)(x)
    x, log_q = self.draws(self.params, draw_key, 4 * n)
    log_p = self.density.value(x)
    return compile_cache.quick_jitted(_resample, self.space, n)(
        x, log_p - log_q, pick_key)

  def summary(self) -> str:
    """Every stage (k-hat, ELBO, agreement, cost) and the verdict, as text."""
    return verdict.summary_table(self.history, self.family, self.k_hat,
                                 self.reliable, self.num_grad_evals)

  def to_inference_data(self, key: PRNGKey, n: int = 1000, **kwargs):
    """q's draws as ArviZ `InferenceData` (`vi.export.to_inference_data`).

    The log weights and PSIS diagnostics are stored with the draws; kwargs
    (`transform`, `num_chains`, `var_names`) pass through.
    """
    from vi_jax.criticism import export  # pylint: disable=g-import-not-at-top
    return export.to_inference_data(
        self.surrogate, self.params, key, n,
        target_log_prob_fn=self.target_log_prob_fn, **kwargs)


def _to_latents(space, x):
  return space.forward_and_log_det(x)[0]


def _resample(space, n, x, log_w, key):
  """n of the draws `x [4n, dim]` resampled by their Pareto-smoothed
  importance weights, as latents in their support."""
  log_w = jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)
  smoothed = diagnostics.psis(log_w).log_weights
  # Inverse-CDF draws (`jax.random.choice`), not `categorical`, whose Gumbel
  # trick draws an [n, 4n] array (2.7 s at n = 4000).
  idx = jax.random.choice(key, smoothed.shape[0], shape=(n,),
                          p=jax.nn.softmax(smoothed))
  return _to_latents(space, x[idx])


# The driver -------------------------------------------------------------------


def _check_max_k_hat(value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      0 < value <= 0.7):
    raise ValueError(f"max_k_hat must be a float in (0, 0.7]; got {value!r}.")
  return float(value)


def _check_inputs(target_log_prob_fn, event_shape, bijector, key, families,
                  num_restarts, num_draws, max_grad_evals):
  """vi.fit's checks (key, event_shape, bijector, the target on one draw);
  returns the latent space, built once for the whole call."""
  vv.prng_key(key)
  if not callable(target_log_prob_fn):
    raise TypeError("target_log_prob_fn must be callable; got "
                    f"{type(target_log_prob_fn).__name__}.")
  space = bij_lib.latent_space(event_shape, bijector)  # ValueError if bad
  probe = mean_field.mean_field_normal(space)
  check_target_on_draw(target_log_prob_fn, probe, key)
  if isinstance(families, str) or not families or any(
      f not in FAMILIES for f in families) or len(set(families)) != len(
          families):
    raise ValueError(f"families must be a non-empty sequence of distinct "
                     f"names from {FAMILIES}; got {families!r}.")
  vv.integer("num_restarts", num_restarts, minimum=2)
  vv.integer("num_draws", num_draws, minimum=100)
  vv.integer("max_grad_evals", max_grad_evals, minimum=auto_stages.FLOW_SAMPLE_SIZE)
  return space


def _not_run(family: str, spent: float, max_time) -> auto_stages.Fit:
  """The record of a stage that the time budget left out."""
  return auto_stages.Fit(StageRecord(
      family=family, method="not run", k_hat=math.nan,
      k_hat_threshold=math.nan, elbo=math.nan, mean_gap=math.nan,
      sd_gap=math.nan, num_grad_evals=0, wall_time=0., passed=False,
      note=f"not run: {TIME_BUDGET_SPENT} (max_time={max_time:g} s, "
      f"{spent:.1f} s spent)", out_of_time=True))


class _Ladder:
  """Runs the stages in order, reporting each, until one passes or the time
  budget is spent (state: the stages run, the progress display, the
  deadline)."""

  def __init__(self, report, at, max_time):
    self.stages, self.report, self.at, self.max_time = [], report, at, max_time

  def out_of_time(self, families) -> bool:
    """True (and the families recorded as not run) once the budget is spent
    or a stage was cut short by it; never before the first fit."""
    fitted = any(s.surrogate is not None for s in self.stages)
    cut_short = any(s.record.out_of_time for s in self.stages)
    if not fitted or (time_budget.seconds_left(self.at) > 0 and
                      not cut_short):
      return False
    for family in families:
      self.stages.append(_not_run(family, self.report.elapsed(),
                                  self.max_time))
    return True

  def run(self, name, stage_fn, *args) -> bool:
    """Runs one stage; True when it passed."""
    self.report.start(name)
    stage = stage_fn(*args)
    self.stages.append(stage)
    self.report.end(stage.record)
    return stage.record.passed


def _run_ladder(density, space, families, config, key, num_restarts,
                ladder: _Ladder) -> list:
  """Every stage run, in order, as `auto_stages.Fit` (the Pathfinder start
  and stages the budget left out with only a record); stops at the first
  pass."""
  laplace_key, start_key, ladder_key = rng.split(key, 3)
  if "laplace" in families and space.dim <= auto_stages.LAPLACE_MAX_DIM:
    if ladder.run("laplace", auto_stages.laplace_stage, density, space,
                  config, laplace_key, num_restarts, ladder.at):
      return ladder.stages
  rungs = auto_stages.ladder([f for f in families if f != "laplace"],
                             space.dim)
  if not rungs or ladder.out_of_time([r.family for r in rungs]):
    return ladder.stages
  laplace = ladder.stages[0] if ladder.stages else None
  if laplace is None or not (
      laplace.record.k_hat < auto_stages.WHITEN_BY_LAPLACE_K_HAT):
    ladder.report.start("pathfinder")
    loc, scale_tril, start = auto_stages.start(density, start_key, ladder.at)
    if laplace is not None and laplace.record.elbo > start.elbo:
      start = start._replace(note=start.note.replace(
          "whitens the ladder", "not used (Laplace's ELBO is higher)"))
    else:
      laplace = None
    ladder.stages.append(auto_stages.Fit(start))
    ladder.report.end(start)
  if laplace is not None:  # the better Gaussian whitens the ladder
    # One small program, not a dozen eager ops (0.4 s of compiles).
    loc = laplace.params["loc"]
    scale_tril = compile_cache.quick_jitted(full_rank_scale_tril)(
        laplace.params)
  keys = rng.split(ladder_key, len(rungs))
  for i, (rung, k) in enumerate(zip(rungs, keys)):
    if ladder.out_of_time([r.family for r in rungs[i:]]):
      break
    if ladder.run(rung.family, auto_stages.run_stage, density, space, rung,
                  config, loc, scale_tril, k, num_restarts, ladder.at):
      break
  return ladder.stages


def auto_fit(target_log_prob_fn, event_shape, bijector=None, *, key: PRNGKey,
             families: Sequence[str] = FAMILIES, num_restarts: int = 2,
             num_draws: int = 16_000, dadvi_draws: int = 30,
             max_dadvi_draws: int = 480, max_iterations: int = 500,
             max_grad_evals: int = 16_000, max_k_hat: float = 0.5,
             dtype=None, max_time: Optional[float] = DEFAULT_MAX_TIME,
             verbose: bool = False,
             progress_bar: Optional[bool] = None) -> AutoFitResult:
  """Fits a surrogate posterior with no choices to make, and says if it can be trusted.

  Pathfinder start, then a family ladder in whitened coordinates (mean-field,
  full-rank or low-rank, a RealNVP flow), each stage validated by PSIS k-hat
  and by the agreement of `num_restarts` independent fits; stops at the first
  family that passes (see the module docstring).

  Args:
    target_log_prob_fn: unnormalized log density of ONE draw, called as
      `f(*z)` (tuple z), `f(**z)` (dict z) or `f(z)` (array z); a scalar.
      The adapters' `target_log_prob_fn` (`vi.adapters.from_numpyro`,
      `from_inference_gym`, `from_tfp_joint_distribution`) works as is.
    event_shape: a shape or pytree of shapes, the latents of one draw.
    bijector: None, one bijector or a pytree of bijectors onto each latent's
      support (as for the surrogates).
    key: a single PRNG key.
    families: the ladder, in order, from "laplace" (first if present),
      "mean_field", "full_rank" (low-rank Gaussian above 200 unconstrained
      dims) and "flow".
    num_restarts: independent fits per family (>= 2), vmapped in one compile.
    num_draws: draws of q for each fit's k-hat, ELBO and moments (S),
      evaluated 2,048 at a time. The estimate of k-hat from S draws has a
      standard error of about (1 + k) / sqrt(3 sqrt(S)) (the generalized
      Pareto fit to the 3 sqrt(S) largest weights): 0.12 at 4,000 draws,
      0.08 at the default 16,000 for k = 0.6 (on a banana, one flow fit's
      k-hat read 0.51 to 0.85 from four sets of 4,000 draws, 0.71 to 0.84
      from 16,000).
    max_k_hat: a stage passes only when its k-hat is below
      `min(max_k_hat, 1 - 1/log10(S), 0.7)`. The default 0.5 is Yao et al.'s
      "good" (q close to p): at 0.5 < k-hat < 0.7 PSIS-corrected moments are
      still biased by the tail q misses (centered eight schools: k-hat 0.57,
      a mean 0.26 sd off after PSIS), which 0.7 (`max_k_hat=0.7`, "usable")
      would let pass.
    dadvi_draws: DADVI's first number of fixed draws (raised to 8 times
      what the family needs, at most `max_dadvi_draws`: 8 dim for
      full-rank). Multiplied by 4 once, and the
      fits re-solved from their optimum, when they pass k-hat but disagree.
    max_dadvi_draws: the most fixed draws DADVI grows to.
    max_iterations: L-BFGS iterations per DADVI solve.
    max_grad_evals: one flow fit's budget of target-gradient evaluations
      (Adam steps x 8 draws per step; 16,000 is 2,000 steps).
    dtype: floating dtype of the fit (default: JAX's default float).
    max_time: wall-clock budget in seconds, compilation included
      (default `DEFAULT_MAX_TIME`, 100 s; None: no limit). A family stage's
      fits (DADVI's L-BFGS iterations, the flow's
      Adam steps) run in chunks and stop when the time left is what the
      stage's evaluation needs (measured on its initial params), then are
      judged as they are, the note saying so; stages not yet started when
      the time is spent are not run (`history` records them as "not run")
      and the best fit so far comes back. Pathfinder's paths stop at the
      deadline too, and so does the Laplace stage's L-BFGS (its Hessian
      and evaluation still run); the first fitting stage always runs, so a
      call can overrun a budget shorter than it. A result cut short by
      the budget is reliable only if the fit it returns passed k-hat and
      agreement.
    verbose: print each stage as it starts and its record as it finishes.
    progress_bar: show a progress bar naming the stage running, the seconds
      and gradient evaluations so far; None (default) shows it when stderr
      is a terminal, as `vi.fit` does.

  Returns:
    `AutoFitResult(surrogate, params, family, k_hat, reliable, num_grad_evals,
    history, target_log_prob_fn)` with `sample(key, n)`, `summary()` and
    `to_inference_data(key, n)`.

  Raises:
    TypeError / ValueError (before compilation): a bad `key`, `event_shape`,
      `bijector`, target (fails or is not scalar on one draw), `families`,
      `max_time` (not None nor > 0), `progress_bar`,
      `num_restarts < 2`, `num_draws < 100`, `max_grad_evals < 8`,
      `families=("laplace",)` above 2,000 unconstrained dims.

  Warns:
    UserWarning when no family passes: the families tried, their k-hats, what
    failed and what to try (non-centered parameterization for funnels, more
    draws, another family).
  """
  space = _check_inputs(target_log_prob_fn, event_shape, bijector, key,
                        families, num_restarts, num_draws, max_grad_evals)
  config = auto_stages.Config(
      num_draws=num_draws,
      dadvi_draws=vv.integer("dadvi_draws", dadvi_draws, minimum=2),
      max_dadvi_draws=vv.integer("max_dadvi_draws", max_dadvi_draws, minimum=2),
      max_iterations=vv.positive_int("max_iterations", max_iterations),
      flow_steps=max_grad_evals // auto_stages.FLOW_SAMPLE_SIZE,
      dtype=None if dtype is None else jnp.dtype(dtype).name,
      max_k_hat=_check_max_k_hat(max_k_hat))
  if (tuple(families) == ("laplace",) and
      space.dim > auto_stages.LAPLACE_MAX_DIM):
    raise ValueError(
        f"families=('laplace',) needs at most {auto_stages.LAPLACE_MAX_DIM} "
        f"unconstrained dims (a dense Hessian); this target has "
        f"{space.dim}.")
  at = time_budget.deadline(max_time)
  report = stage_progress.StageProgress(verbose, progress_bar, max_time)
  try:
    density = compiled_density(target_log_prob_fn, space, config.dtype)
    fits = _run_ladder(density, space, families, config, key, num_restarts,
                       _Ladder(report, at, max_time))
  finally:
    report.close()
  history = [f.record for f in fits]
  fits = [f for f in fits if f.surrogate is not None]
  chosen = fits[-1] if fits[-1].record.passed else max(
      fits, key=lambda f: f.record.elbo if math.isfinite(f.record.elbo)
      else -math.inf)
  record, surrogate, params = chosen.record, chosen.surrogate, chosen.params
  out_of_time = time_budget.seconds_left(at) <= 0 or any(
      r.out_of_time for r in history)
  refined = record if out_of_time else (
      auto_stages.refine_k_hat(density, chosen, config,
                               rng.fold_in(key, _REFINE_KEY)))
  history = [refined if r is record else r for r in history]
  record = refined
  total = sum(r.num_grad_evals for r in history)
  if not record.passed:
    warnings.warn(verdict.failure_warning(history, record.family),
                  UserWarning, stacklevel=2)
  return AutoFitResult(surrogate=surrogate, params=params,
                       family=record.family, k_hat=record.k_hat,
                       reliable=record.passed, num_grad_evals=total,
                       history=tuple(history),
                       target_log_prob_fn=target_log_prob_fn, space=space,
                       density=density, draws=chosen.draws)
