"""Tests of vi_jax.stochastic.adaptive.fit_adaptive against closed-form Gaussians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vi_jax as vi

D = 3
_SD = np.array([1., 2., .5])
_CORR = np.array([[1., .8, .3], [.8, 1., .5], [.3, .5, 1.]])
COV = _CORR * np.outer(_SD, _SD)
PREC = np.linalg.inv(COV)
MU = np.array([0.5, -1., 2.])
Q_FR = vi.surrogates.full_rank_normal(D)  # shared: programs compile once
Q_MF = vi.surrogates.mean_field_normal(D)


def gaussian_log_prob(x):
  r = x - MU.astype(np.float32)
  return -0.5 * r @ PREC.astype(np.float32) @ r


def test_full_rank_converges_to_the_posterior():
  res = vi.fit_adaptive(gaussian_log_prob, Q_FR, key=jax.random.key(0),
                        grid_steps=100, window=100, max_steps=6000)
  assert bool(res.converged) and float(res.r_hat) < 1.1
  assert np.isclose(res.learning_rate, (1., .3, .1, .03, .01, .003)).any()
  dist = Q_FR.distribution_fn(res.params)
  mean, cov = np.asarray(dist.mean()), np.asarray(dist.covariance())
  np.testing.assert_array_less(np.abs(mean - MU) / _SD, 0.1)
  np.testing.assert_allclose(np.sqrt(np.diag(cov)), _SD, rtol=0.1)
  np.testing.assert_allclose(cov / np.outer(_SD, _SD), _CORR, atol=0.1)
  steps_of_run = res.trace.shape[0]
  assert int(res.num_steps) == 5 * 100 + steps_of_run
  assert int(res.num_grad_evals) == 8 * int(res.num_steps)
  assert np.all(np.isfinite(res.trace))


def test_grid_picks_the_rate_that_moves():
  # 1e-6 barely moves from the start in the grid steps, 50 makes Adam jump
  # around (steps of 50 on a posterior of sd <= 2): only 0.1 reaches the
  # optimum, and its window-average loss wins.
  res = vi.fit_adaptive(gaussian_log_prob, Q_MF, key=jax.random.key(1),
                        learning_rates=(50., 0.1, 1e-6), grid_steps=100,
                        window=100, max_steps=3000)
  np.testing.assert_allclose(res.learning_rate, 0.1)
  mean = np.asarray(Q_MF.distribution_fn(res.params).mean())
  np.testing.assert_array_less(np.abs(mean - MU) / _SD, 0.15)
  # the mean-field optimum's sds are 1 / sqrt(diag(precision))
  sd = np.asarray(Q_MF.distribution_fn(res.params).stddev())
  np.testing.assert_allclose(sd, 1 / np.sqrt(np.diag(PREC)), rtol=0.15)


def test_max_steps_hit_returns_not_converged():
  with pytest.warns(UserWarning, match="max_steps"):
    res = vi.fit_adaptive(gaussian_log_prob, Q_MF, key=jax.random.key(2),
                          learning_rates=(1e-4,), grid_steps=100, window=100,
                          max_steps=300)
  # At 1e-4 Adam drifts steadily for 300 steps: the iterates are not
  # stationary.
  assert not bool(res.converged) and float(res.r_hat) > 1.1
  assert int(res.num_steps) == 300 and res.trace.shape == (300,)


@pytest.mark.parametrize("kwargs, match", [
    (dict(learning_rates=()), "learning_rates"),
    (dict(learning_rates=(0.1, -1.)), "learning_rates"),
    (dict(sample_size=0), "sample_size"),
    (dict(grid_steps=1), "grid_steps"),
    (dict(window=2), "window"),
    (dict(max_steps=100, grid_steps=100, window=100), "max_steps"),
    (dict(r_hat_threshold=1.), "r_hat_threshold"),
    (dict(key=None), "key"),
    (dict(init_params={"loc": jnp.zeros(2)}), "init_params"),
])
def test_bad_input_names_the_argument(kwargs, match):
  args = dict(key=jax.random.key(0))
  args.update(kwargs)
  with pytest.raises((TypeError, ValueError), match=match):
    vi.fit_adaptive(gaussian_log_prob, Q_MF, **args)


def test_bad_target():
  with pytest.raises(ValueError, match="scalar"):
    vi.fit_adaptive(lambda x: x, Q_MF, key=jax.random.key(0))
