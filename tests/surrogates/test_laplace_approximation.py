"""Laplace approximation against closed forms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

tfb, tfd = tfp.bijectors, tfp.distributions

_RNG = np.random.default_rng(0)
_A = _RNG.normal(size=(4, 4))
COV = _A @ _A.T + 0.3 * np.eye(4)
MEAN = np.array([1., -2., 0.5, 3.])
PREC = np.linalg.inv(COV)


def gaussian(x):
  d = x - MEAN
  return -0.5 * d @ PREC @ d


def test_gaussian_target_gives_the_exact_mean_and_covariance():
  r = vi.laplace(gaussian, (4,), key=jax.random.key(0))
  assert bool(r.converged)
  np.testing.assert_allclose(r.loc, MEAN, atol=1e-4)
  np.testing.assert_allclose(r.scale_tril, np.linalg.cholesky(COV), atol=1e-4)
  chex.assert_trees_all_close(vi.surrogates.full_rank_scale_tril(r.params),
                              r.scale_tril, atol=1e-5)
  assert vi.surrogates.laplace is vi.laplace
  assert 4 < int(r.num_grad_evals) < 200


def test_badly_scaled_gaussian_in_float32():
  """sds 1e-3 and 1e3 with correlation 0.9: a precision of condition number
  5e12, beyond float32 unless scaled to unit diagonal first."""
  sd = np.array([1e-3, 1e3])
  cov = np.array([[1., 0.9], [0.9, 1.]]) * np.outer(sd, sd)
  prec = np.linalg.inv(cov).astype(np.float32)
  r = vi.laplace(lambda x: -0.5 * x @ prec @ x, (2,), dtype=jnp.float32)
  assert bool(r.converged)
  got = np.asarray(r.scale_tril, np.float64) @ np.asarray(r.scale_tril).T
  np.testing.assert_allclose(np.sqrt(np.diag(got)), sd, rtol=1e-3)
  assert abs(got[0, 1] / np.sqrt(got[0, 0] * got[1, 1]) - 0.9) < 1e-3


def test_log_det_jacobian_is_included_lognormal_is_exact_in_log_space():
  # log sigma ~ N(0.3, 0.5^2): the unconstrained density (with the Jacobian)
  # of a LogNormal under Exp is exactly that Gaussian; without the Jacobian
  # the mode would be at 0.3 - 0.25.
  target = lambda sigma: tfd.LogNormal(0.3, 0.5).log_prob(sigma)
  r = vi.laplace(target, (), tfb.Exp())
  assert bool(r.converged)
  np.testing.assert_allclose(r.loc, [0.3], atol=1e-4)
  np.testing.assert_allclose(r.scale_tril, [[0.5]], rtol=1e-4)
  z, _ = r.surrogate.sample_and_log_prob(r.params, jax.random.key(0), 4)
  assert z.shape == (4,) and bool(jnp.all(z > 0))


def test_neals_funnel_mode_is_degenerate_and_an_unbounded_density_fails():
  """Neal's funnel (9 x's) has one mode, degenerate: x = 0 and
  d/dv [-v^2 / 18 - 9 v / 2] = 0, v = -40.5 (x sds e^-20). Laplace finds it
  and PSIS k-hat rejects the approximation; a density without a mode is not
  converged."""
  def funnel(v, x):
    return (tfd.Normal(0., 3.).log_prob(v) +
            jnp.sum(tfd.Normal(0., jnp.exp(v / 2.)).log_prob(x)))
  r = vi.laplace(funnel, ((), (9,)), key=jax.random.key(0))
  if bool(r.converged):
    np.testing.assert_allclose(r.loc[0], -40.5, rtol=1e-2)
  k_hat = vi.diagnostics.diagnose(funnel, r.surrogate, r.params,
                                  jax.random.key(1)).pareto_k
  assert not float(k_hat) < 0.7
  r = vi.laplace(lambda x: jnp.sum(x), (2,))
  assert not bool(r.converged)


def test_jit_over_the_start():
  run = jax.jit(lambda x0: vi.laplace(gaussian, (4,), init_loc=x0).loc)
  np.testing.assert_allclose(run(jnp.ones(4)), MEAN, atol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"key": 3}, "key"),
    ({"max_iterations": 0}, "max_iterations"),
    ({"event_shape": "abc"}, "event_shape"),
    ({"target_log_prob_fn": lambda x: x}, "target_log_prob_fn"),
])
def test_bad_input_errors_name_the_argument(kwargs, match):
  args = {"target_log_prob_fn": gaussian, "event_shape": (4,)}
  args.update(kwargs)
  with pytest.raises((TypeError, ValueError), match=match):
    vi.laplace(args.pop("target_log_prob_fn"), args.pop("event_shape"), **args)
