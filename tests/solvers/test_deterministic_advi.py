"""Tests of vi_jax.solvers.deterministic_advi against closed forms of the fixed-draw problem."""

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import vi_jax as vi

D = 3
_SD = np.array([1., 2., .5])
_CORR = np.array([[1., .8, .3], [.8, 1., .5], [.3, .5, 1.]])
COV = _CORR * np.outer(_SD, _SD)
PREC = np.linalg.inv(COV)
MU = np.array([0.5, -1., 2.])


Q_MF = vi.surrogates.mean_field_normal(D)  # shared: its solves compile once
FIXED = dict(tol_se=np.inf, tol_mean_se=np.inf)  # M never grows


def gaussian_log_prob(x):
  r = x - MU.astype(np.float32)
  return -0.5 * r @ PREC.astype(np.float32) @ r


def _draws_and_eps(q, params, key, m):
  """The fixed draws z [M, D] and their standardized base noise under the
  fitted Gaussian (mean, lower Cholesky of its covariance)."""
  dist = q.distribution_fn(params)
  mean, cov = np.asarray(dist.mean(), float), np.asarray(dist.covariance(),
                                                          float)
  chol = np.linalg.cholesky(cov)
  z, _ = q.sample_and_log_prob(params, key, m)
  eps = np.linalg.solve(chol, (np.asarray(z, float) - mean).T).T
  return np.asarray(z, float), eps, mean, cov


def test_linear_response_covariance_is_exact_on_gaussian():
  # Mean-field underestimates the variances (1 / diag(precision)); the LR
  # covariance at the DADVI optimum is the exact posterior covariance.
  q = Q_MF
  key = jax.random.key(1)
  res = vi.dadvi(gaussian_log_prob, q, key=key, num_draws=16, **FIXED)
  assert bool(res.converged)
  sd = np.asarray(q.distribution_fn(res.params).stddev())
  np.testing.assert_allclose(sd, 1 / np.sqrt(np.diag(PREC)), rtol=0.2)
  assert np.all(sd[:2] < 0.8 * _SD[:2])  # mean-field is too narrow here
  lr = vi.dadvi_linear_response_covariance(
      gaussian_log_prob, q, res.params, key=key, num_draws=res.num_draws)
  chex.assert_shape(lr, (D, D))
  np.testing.assert_allclose(lr, COV, rtol=2e-3, atol=2e-3 * COV.max())


def test_full_rank_recovers_closed_form_saa_optimum():
  # For p = N(mu, Sigma) and q = N(m, L L^T), z_k = m + L eps_k, the fixed-draw
  # -ELBO is 1/2 (m + L epsbar - mu)' P (.) + 1/2 tr(P L S L') - log|L| + c,
  # S the centered sample covariance of eps: optimum L S L' = Sigma,
  # m = mu - L epsbar.
  q = vi.surrogates.full_rank_normal(D)
  key = jax.random.key(2)
  res = vi.dadvi(gaussian_log_prob, q, key=key, **FIXED)
  assert int(res.num_draws) == 30 and bool(res.converged)
  m = int(res.num_draws)
  _, eps, mean, cov = _draws_and_eps(q, res.params, key, m)
  s = np.cov(eps.T, bias=True)
  chol_sigma, chol_s = np.linalg.cholesky(COV), np.linalg.cholesky(s)
  scale = chol_sigma @ np.linalg.inv(chol_s)
  np.testing.assert_allclose(cov, scale @ scale.T, rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(mean, MU - scale @ eps.mean(0), atol=2e-3)
  # ... which is the exact posterior within the MC error of 30 draws.
  sd = np.sqrt(np.diag(COV))
  assert np.all(np.abs(mean - MU) / sd < 0.5)
  np.testing.assert_allclose(np.sqrt(np.diag(cov)), sd, rtol=0.35)


def _regression():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(40, D)) @ np.array([[1., .6, 0.], [0., 1., .5],
                                           [0., 0., 1.]])
  y = x @ np.array([1., -2., .5]) + rng.normal(size=40)
  prec = x.T @ x + np.eye(D)  # noise sd 1, prior N(0, I)
  return x, y, prec, np.linalg.solve(prec, x.T @ y)


def test_mean_field_on_linear_regression_gets_mean_field_optimum():
  x, y, prec, post_mean = _regression()
  xf, yf = x.astype(np.float32), y.astype(np.float32)

  def log_prob(w):
    return (jnp.sum(stats_norm_logpdf(yf - xf @ w)) +
            jnp.sum(stats_norm_logpdf(w)))

  q = vi.surrogates.mean_field_normal(D)
  key = jax.random.key(4)
  res = vi.dadvi(log_prob, q, key=key, num_draws=200, **FIXED)
  z, eps, m, cov = _draws_and_eps(q, res.params, key, int(res.num_draws))
  s = np.sqrt(np.diag(cov))
  # Stationarity of the fixed-draw objective, in closed form:
  # m + s * epsbar = posterior mean and s_i (P o S s)_i = 1, S = mean eps eps'.
  np.testing.assert_allclose(m + s * eps.mean(0), post_mean, atol=2e-3)
  sec = (eps - eps.mean(0)).T @ (eps - eps.mean(0)) / eps.shape[0]
  np.testing.assert_allclose(s * ((prec * sec) @ s), 1., rtol=2e-3)
  # The mean-field optimum of the exact ELBO: the posterior mean and
  # sd_i = 1 / sqrt(P_ii), within the MC error of 200 draws.
  mf_sd = 1 / np.sqrt(np.diag(prec))
  np.testing.assert_allclose(s, mf_sd, rtol=0.1)
  assert np.all(np.abs(m - post_mean) / mf_sd < 0.3)


def stats_norm_logpdf(r):
  return -0.5 * jnp.square(r) - 0.5 * np.log(2 * np.pi)


def test_loss_and_se_are_the_per_draw_elbo_terms():
  q = Q_MF
  key = jax.random.key(5)
  res = vi.dadvi(gaussian_log_prob, q, key=key, num_draws=16, **FIXED)
  z, _, m, cov = _draws_and_eps(q, res.params, key, 16)
  log_p = stats.multivariate_normal(MU, COV).logpdf(z) + 0.5 * np.log(
      np.linalg.det(2 * np.pi * COV))  # the target is unnormalized
  log_q = stats.multivariate_normal(m, cov).logpdf(z)
  np.testing.assert_allclose(res.loss, np.mean(log_q - log_p), rtol=1e-4)
  np.testing.assert_allclose(res.loss_se, np.std(log_q - log_p, ddof=1) / 4.,
                             rtol=1e-3)
  # objective gradient evaluations, each of M = 16 draws
  assert int(res.num_grad_evals) > 0 and int(res.num_grad_evals) % 16 == 0


def test_draws_grow_while_the_se_is_above_tol():
  q = Q_MF  # mean-field misfit: log p - log q varies over the draws
  key = jax.random.key(6)
  fixed = vi.dadvi(gaussian_log_prob, q, key=key, num_draws=8, **FIXED)
  assert int(fixed.num_draws) == 8
  tol = float(fixed.loss_se) / 2.5  # needs about 6x the draws: 8 -> 32 or 64
  grown = vi.dadvi(gaussian_log_prob, q, key=key, num_draws=8, max_draws=256,
                   tol_se=tol, tol_mean_se=np.inf)
  assert int(grown.num_draws) in (32, 64, 128)
  assert float(grown.loss_se) <= tol and bool(grown.converged)
  assert int(grown.num_grad_evals) > int(fixed.num_grad_evals)
  with pytest.warns(UserWarning, match="tol_se"):
    capped = vi.dadvi(gaussian_log_prob, q, key=key, num_draws=8,
                      max_draws=16, tol_se=tol, tol_mean_se=np.inf)
  assert int(capped.num_draws) == 16 and not bool(capped.converged)


def test_sandwich_standard_error_of_the_means():
  # Gaussian target, mean-field: the fixed-draw optimum is m = mu - s * epsbar
  # (see above), so the fitted means err by s / sqrt(M) in sd units.
  dadvi_module = importlib.import_module("vi_jax.solvers.deterministic_advi")
  key = jax.random.key(9)
  res = vi.dadvi(gaussian_log_prob, Q_MF, key=key, num_draws=32, **FIXED)
  ratio = dadvi_module._mean_se_ratio(gaussian_log_prob, Q_MF, 32, res.params,
                                      key)
  np.testing.assert_allclose(ratio, 1 / np.sqrt(32), rtol=0.3)
  # Growing on it: 1/sqrt(M) <= 0.2 needs M >= 25: 16 -> 32.
  grown = vi.dadvi(gaussian_log_prob, Q_MF, key=key, num_draws=16,
                   tol_se=np.inf, tol_mean_se=0.2)
  assert int(grown.num_draws) in (32, 64) and bool(grown.converged)


def test_full_rank_raises_draws_to_dim_plus_one():
  q = vi.surrogates.full_rank_normal(D)
  res = vi.dadvi(gaussian_log_prob, q, key=jax.random.key(7), num_draws=2,
                 **FIXED)
  assert int(res.num_draws) == D + 1
  # With D + 1 draws the sample covariance of the base draws is nonsingular:
  # the optimum is finite (L S L' = Sigma, see above).
  _, eps, _, cov = _draws_and_eps(q, res.params, jax.random.key(7), D + 1)
  s = np.cov(eps.T, bias=True)
  np.testing.assert_allclose(np.linalg.cholesky(cov) @ s @ np.linalg.cholesky(
      cov).T, COV, rtol=5e-3, atol=5e-3)
  with pytest.raises(ValueError, match="max_draws"):
    vi.dadvi(gaussian_log_prob, q, key=jax.random.key(7), num_draws=2,
             max_draws=D)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_draws=0), "num_draws"),
    (dict(num_draws=2.5), "num_draws"),
    (dict(max_iterations=0), "max_iterations"),
    (dict(tol_se=-1.), "tol_se"),
    (dict(tol_mean_se=0.), "tol_mean_se"),
    (dict(gtol=0.), "gtol"),
    (dict(key=None), "key"),
    (dict(init_params={"loc": jnp.zeros(2)}), "init_params"),
])
def test_bad_input_names_the_argument(kwargs, match):
  args = dict(key=jax.random.key(0))
  args.update(kwargs)
  with pytest.raises((TypeError, ValueError), match=match):
    vi.dadvi(gaussian_log_prob, vi.surrogates.mean_field_normal(D), **args)


def test_bad_target_and_surrogate():
  with pytest.raises(ValueError, match="reparameterized"):
    vi.dadvi(lambda z: jnp.sum(z), vi.surrogates.bernoulli(3),
             key=jax.random.key(0))
  with pytest.raises(ValueError, match="scalar"):
    vi.dadvi(lambda x: x, vi.surrogates.mean_field_normal(D),
             key=jax.random.key(0))


def test_compiles_once_when_called_twice(count_compiles):
  q = Q_MF
  key = jax.random.key(8)
  first = vi.dadvi(gaussian_log_prob, q, key=key, num_draws=16, **FIXED)
  with count_compiles() as compiles:
    second = vi.dadvi(gaussian_log_prob, q, key=key, num_draws=16,
                      **FIXED)
  assert not compiles
  np.testing.assert_array_equal(first.params["loc"], second.params["loc"])
