"""auto_fit's stages (vi_jax.auto.stages) on a correlated 3-dim Gaussian
target, whose posterior (mean, covariance, log Z = 0) is known in closed form:
the Laplace stage is exact, Pathfinder's start and the DADVI stage recover it,
mean-field fails by the k-hat its closed form predicts; the ladder, the fixed
draws and the k-hat refinement against the rules their docstrings state."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vi_jax as vi
from vi_jax.auto import stages
from vi_jax._src import time_budget
from vi_jax.criticism import diagnostics
from vi_jax.auto import stage_programs
from vi_jax.model import bijectors as bij_lib
from vi_jax.model.compiled_density import compiled_density
from vi_jax.surrogates import flows
from vi_jax.surrogates import full_rank
from vi_jax.surrogates import low_rank
from vi_jax.surrogates import mean_field

MEAN = np.array([1., -2., 0.5])
SD = np.array([0.5, 2., 1.])
CORR = np.array([[1., 0.8, 0.3], [0.8, 1., 0.5], [0.3, 0.5, 1.]])
COV = CORR * np.outer(SD, SD)
PRECISION = np.linalg.inv(COV)
LOG_NORM = -0.5 * (3 * np.log(2 * np.pi) + np.linalg.slogdet(COV)[1])
SPACE = bij_lib.latent_space((3,), None)


def gaussian(x):
  """The normalized N(MEAN, COV) density: log Z = 0."""
  d = x - MEAN.astype(np.float32)
  return LOG_NORM - 0.5 * d @ jnp.asarray(PRECISION, jnp.float32) @ d


DENSITY = compiled_density(gaussian, SPACE)


def _config(num_draws=1000, dadvi_draws=30, max_dadvi_draws=120,
            max_grad_evals=800, max_k_hat=0.5):
  # As vi.auto_fit builds it (vi_jax/auto/automatic_vi.py), smaller.
  return stages.Config(
      num_draws=num_draws, dadvi_draws=dadvi_draws,
      max_dadvi_draws=max_dadvi_draws, max_iterations=200,
      flow_steps=max_grad_evals // stages.FLOW_SAMPLE_SIZE, dtype=None,
      max_k_hat=max_k_hat)


def _psis_moments(surrogate, params, key, n=20_000):
  """q's mean and covariance corrected by PSIS weights, from n draws."""
  z, log_q = surrogate.sample_and_log_prob(params, key, n)
  log_w = jax.vmap(gaussian)(z) - log_q
  w = np.exp(np.asarray(diagnostics.psis(log_w).log_weights, np.float64))
  w /= w.sum()
  z = np.asarray(z, np.float64)
  mean = w @ z
  return mean, (z - mean).T @ ((z - mean) * w[:, None])


def _assert_posterior(mean, cov, mean_tol, sd_rtol, corr_atol):
  sd = np.sqrt(np.diag(cov))
  np.testing.assert_array_less(np.abs(mean - MEAN) / SD, mean_tol)
  np.testing.assert_allclose(sd, SD, rtol=sd_rtol)
  np.testing.assert_allclose(cov / np.outer(sd, sd), CORR, atol=corr_atol)


# ladder ---------------------------------------------------------------------


def test_ladder_keeps_the_order_and_goes_low_rank_above_the_limit():
  rungs = stages.ladder(["flow", "mean_field", "full_rank"], 3)
  assert [r.family for r in rungs] == ["flow", "mean_field", "full_rank"]
  assert [r.fitter for r in rungs] == ["adam", "dadvi", "dadvi"]
  assert rungs[0].make is flows.real_nvp
  assert rungs[1].make is mean_field.mean_field_normal
  at = stages.ladder(["full_rank"], stages.LOW_RANK_ABOVE)[0]
  assert at.family == "full_rank" and at.make is full_rank.full_rank_normal
  assert at.kwargs == ()
  for dim in (stages.LOW_RANK_ABOVE + 1, 10_000):
    above = stages.ladder(["full_rank"], dim)[0]
    assert above.family == "low_rank" and above.make is low_rank.low_rank_normal
    assert above.kwargs == (("rank", round(math.sqrt(dim))),)  # 14, 100
    assert above.method == "DADVI, L-BFGS"


# _fixed_draws ---------------------------------------------------------------


def _stacked_init(surrogate):
  return jax.tree_util.tree_map(lambda x: x[None],
                                surrogate.init(jax.random.key(0)))


@pytest.mark.parametrize("family, dim, dadvi_draws, max_draws, want", [
    # full-rank needs dim + 1 draws; it starts at 8 (M_min - 1) = 8 dim,
    # raised to dadvi_draws and capped at max_dadvi_draws.
    ("full_rank", 3, 2, 480, 24),
    ("full_rank", 3, 30, 480, 30),
    ("full_rank", 25, 30, 480, 200),
    ("full_rank", 25, 30, 100, 100),
    # mean-field needs 2: 8 (2 - 1) = 8.
    ("mean_field", 25, 2, 480, 8),
])
def test_fixed_draws_start_at_eight_times_what_the_family_needs(
    family, dim, dadvi_draws, max_draws, want):
  rung = stages.ladder([family], dim)[0]
  surrogate = rung.make((dim,))
  config = _config(dadvi_draws=dadvi_draws, max_dadvi_draws=max_draws)
  assert stages._fixed_draws(rung, config, surrogate,
                             _stacked_init(surrogate)) == want


def test_fixed_draws_of_the_flow_are_none():
  flow = stages.ladder(["flow"], 3)[0]  # fitted by Adam: no fixed draws
  assert stages._fixed_draws(flow, _config(), None, None) == 0


# laplace_stage --------------------------------------------------------------


def test_laplace_stage_is_exact_on_a_gaussian_and_passes():
  config = _config()
  record, surrogate, params, _ = stages.laplace_stage(
      DENSITY, SPACE, config, jax.random.key(0), 2)
  np.testing.assert_allclose(np.asarray(params["loc"]), MEAN, atol=1e-4)
  tril = np.asarray(full_rank.full_rank_scale_tril(params), np.float64)
  np.testing.assert_allclose(tril @ tril.T, COV, rtol=1e-3, atol=1e-4)
  assert record.family == "laplace" and record.passed
  assert record.k_hat < 0.5 and record.k_hat_threshold == 0.5
  # q = p: every log weight is log Z = 0, the ELBO too; the fits agree.
  assert abs(record.elbo) < 1e-3
  assert record.mean_gap < 1e-3 and record.sd_gap < 1e-3
  assert 0 < record.num_grad_evals < 500
  assert record.note.startswith("pass") and "no regular mode" not in record.note
  z, _ = surrogate.sample_and_log_prob(params, jax.random.key(1), 4)
  assert z.shape == (4, 3)


def test_laplace_stage_stopped_by_its_deadline_does_not_pass():
  # The same Gaussian as above, which passes without a deadline; a deadline
  # already past stops L-BFGS at its first iteration: the stage runs one of
  # its two starts, says so, and cannot pass.
  past = time_budget.deadline(1e-9)
  record, _, params, _ = stages.laplace_stage(
      DENSITY, SPACE, _config(), jax.random.key(0), 2, at=past)
  assert record.out_of_time and not record.passed
  assert "stopped: the time budget was spent" in record.note, record.note
  assert "1 of 2 starts run" in record.note
  assert record.num_grad_evals < 50  # one L-BFGS iteration and a Hessian
  assert np.all(np.isfinite(np.asarray(params["loc"])))


# start ----------------------------------------------------------------------


def test_start_is_pathfinders_gaussian_near_the_posterior():
  loc, scale_tril, record = stages.start(DENSITY, jax.random.key(0))
  loc, tril = np.asarray(loc, np.float64), np.asarray(scale_tril, np.float64)
  _assert_posterior(loc, tril @ tril.T, 0.05, 0.1, 0.05)
  assert record.family == "pathfinder" and not record.passed
  assert math.isnan(record.k_hat_threshold) and math.isnan(record.mean_gap)
  assert record.k_hat < 0.5 and record.num_grad_evals > 0
  assert -0.1 < record.elbo < 0.05  # ELBO <= log Z = 0, up to Monte Carlo
  assert record.note.startswith("start: whitens the ladder (+")


# run_stage ------------------------------------------------------------------


def test_full_rank_stage_recovers_the_gaussian_and_passes():
  # Whitened by N(0, I), far from the posterior: DADVI does the work.
  rung = stages.ladder(["full_rank"], 3)[0]
  record, surrogate, params, _ = stages.run_stage(
      DENSITY, SPACE, rung, _config(), jnp.zeros(3), jnp.eye(3),
      jax.random.key(0), 2)
  assert record.family == "full_rank" and record.passed, record.note
  assert record.k_hat < 0.5
  assert record.mean_gap <= 0.1 and record.sd_gap <= 0.1
  assert -0.1 < record.elbo < 0.05  # ELBO <= log Z = 0, up to Monte Carlo
  assert "fixed draws]" in record.note and record.num_grad_evals > 0
  # q itself carries DADVI's fixed-draw error (about 1 / sqrt(M) sd, a
  # correlation off by 0.1 to 0.3 with M = 30), which the PSIS-corrected
  # moments (what auto_fit returns) remove.
  mean, cov = _psis_moments(surrogate, params, jax.random.key(1))
  _assert_posterior(mean, cov, 0.1, 0.1, 0.05)


def test_mean_field_stage_fails_by_the_k_hat_of_its_closed_form():
  # For Gaussians q = N(m, diag(s^2)) and p = N(MEAN, COV), the weights p / q
  # have a Pareto tail of shape k = 1 - 1 / lambda_max, lambda_max the top
  # eigenvalue of COV / (s s^T) (as N(0, v^2) over N(0, 1) gives 1 - 1 / v^2).
  # The KL-optimal mean-field has s^2 = 1 / PRECISION_ii: k = 0.84 here.
  s_opt = 1. / np.sqrt(np.diag(PRECISION))
  k_of = lambda s: 1. - 1. / np.linalg.eigvalsh(COV / np.outer(s, s)).max()
  assert k_of(s_opt) > 0.8
  rung = stages.ladder(["mean_field"], 3)[0]
  record, _, params, _ = stages.run_stage(
      DENSITY, SPACE, rung, _config(num_draws=4000), jnp.zeros(3),
      jnp.eye(3), jax.random.key(0), 2)
  assert not record.passed and record.family == "mean_field"
  assert record.note.startswith("fail: k-hat")
  # Whitened by N(0, I), the params are q's own; DADVI's 30 fixed draws
  # leave its sds about 1 / sqrt(2 M) = 13% from the KL optimum.
  s = np.asarray(jax.nn.softplus(params["raw_scale"]), np.float64)
  np.testing.assert_allclose(s, s_opt, rtol=0.3)
  assert "[DADVI, 30 fixed draws]" in record.note
  # The estimate from 4,000 draws against the closed form of the returned q
  # (standard error about (1 + k) / sqrt(3 sqrt(S)) = 0.14).
  assert abs(record.k_hat - k_of(s)) < 0.25, (record.k_hat, k_of(s))


# refine_k_hat ---------------------------------------------------------------


def test_k_hat_near_0_7_is_estimated_again_from_four_times_the_draws():
  """q = N(0, 1), p = N(0, s^2): the weights exp(x^2 (1 - 1/s^2) / 2) have a
  Pareto tail of shape k = 1 - 1/s^2 (closed form; here 0.7). The refined
  k-hat (64,000 draws) is near it; records away from 0.7, or passed, are
  kept."""
  k_true = 0.7
  target = lambda z: jnp.sum(-0.5 * z ** 2 * (1. - k_true))
  config = stages.Config(num_draws=16_000, dadvi_draws=30,
                         max_dadvi_draws=480, max_iterations=500,
                         flow_steps=8, dtype=None, max_k_hat=0.5)
  record = vi.StageRecord("flow", "Adam", 0.65, 0.5, -1., 0., 0., 8, 1.,
                          False, "fail: k-hat 0.65 >= 0.50")
  keys = jax.random.split(jax.random.key(1), 8)
  fit = _fit_of(target, record, config)
  refined = [stages.refine_k_hat(fit[0], fit[1], config, k) for k in keys]
  k64 = np.array([r.k_hat for r in refined])
  assert abs(k64.mean() - k_true) < 0.1, k64
  assert "from 64,000 draws, 0.65 from 16,000" in refined[0].note
  far = record._replace(k_hat=0.5)
  assert stages.refine_k_hat(
      fit[0], fit[1]._replace(record=far), config, keys[0]) is far
  passed = record._replace(passed=True)
  assert stages.refine_k_hat(
      fit[0], fit[1]._replace(record=passed), config, keys[0]) is passed


def _fit_of(target, record, config):
  """`(density, Fit)`: q = N(0, 1) over one unconstrained dim (a mean-field
  rung whitened by N(0, 1)) with its record."""
  space = bij_lib.latent_space((1,), None)
  q = mean_field.mean_field_normal((1,), init_scale=1.)
  rung = stages.ladder(["mean_field"], 1)[0]
  draws = stage_programs.fit_draws(rung, config, jnp.zeros(1), jnp.eye(1))
  return compiled_density(target, space), stages.Fit(
      record, q, q.init(jax.random.key(0)), draws)


@pytest.mark.parametrize("k_hat, refined", [
    (0.59, False), (0.61, True), (0.75, True), (0.79, True), (0.81, False),
    (1.5, False), (math.nan, False)])
def test_refine_k_hat_only_within_the_window_of_0_7(k_hat, refined):
  assert stages.PSIS_USABLE == 0.7 and stages.REFINE_WINDOW == 0.1
  target = lambda z: jnp.sum(-0.5 * z ** 2)  # q = p: the new k-hat is low
  config = _config(num_draws=200)
  record = stages.StageRecord("flow", "Adam", k_hat, 0.5, -1., 0., 0., 8, 1.,
                              False, "fail")
  density, fit = _fit_of(target, record, config)
  out = stages.refine_k_hat(density, fit, config, jax.random.key(1))
  if not refined:
    assert out is record
    return
  assert out.k_hat < 0.5 and out.wall_time >= record.wall_time
  assert out.note == (f"fail [k-hat {out.k_hat:.2f} from 800 draws, "
                      f"{k_hat:.2f} from 200]")
  assert out._replace(k_hat=k_hat, wall_time=1., note="fail") == record
