"""PSIS k-hat, ESS, log Z: against ArviZ's PSIS and closed forms."""

import math
import warnings

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi
from vi_jax.criticism import diagnostics as D

tfd = tfp.distributions

with warnings.catch_warnings():
  warnings.simplefilter("ignore")
  az = pytest.importorskip("arviz")


def _arviz_psis(lw, reff=1.):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out, k = az.psislw(np.array(lw, np.float64), reff=reff)
  return np.asarray(out), float(k)


def _weight_sets():
  rng = np.random.default_rng(0)
  return {
      "student_t2_heavy": rng.standard_t(2, 1000),
      "gaussian_light": 0.3 * rng.normal(size=1000),
      "gaussian_k_above_half": 2. * rng.normal(size=4000),
      "small_s100": rng.normal(size=100),
      "too_few_s20": rng.normal(size=20),
      "ties": np.round(rng.normal(size=1000), 1),
      "huge_spread_cutoffmin": 300. * rng.normal(size=1000),
  }


@pytest.mark.parametrize("reff", [1., 0.6])
def test_psis_matches_arviz_float64(reff):
  # Same algorithm as arviz.psislw in float64: only summation order differs,
  # so k-hat and the smoothed weights agree to 1e-8 (measured ~1e-13).
  for name, lw in _weight_sets().items():
    a_lw, a_k = _arviz_psis(lw, reff)
    with jax.enable_x64(True):
      r = D.psis(jnp.asarray(lw, jnp.float64), reff=reff)
      k, out = float(r.pareto_k), np.asarray(r.log_weights)
    if np.isinf(a_k):
      assert k == a_k, name
    else:
      assert abs(k - a_k) < 1e-8 * max(1., abs(a_k)), name
    # Tied draws may swap places within the tail: compare weights as a set.
    np.testing.assert_allclose(np.sort(out), np.sort(a_lw), atol=1e-8,
                               err_msg=name)
    if name != "ties":
      np.testing.assert_allclose(out, a_lw, atol=1e-8, err_msg=name)


def test_psis_matches_arviz_float32():
  # float32 inputs: k-hat within 1e-3 and smoothed log weights within 1e-3 of
  # ArviZ's float64 result (measured: 1e-5 and 3e-5).
  sets = _weight_sets()
  for name in ["student_t2_heavy", "gaussian_light", "gaussian_k_above_half",
               "small_s100"]:
    lw = sets[name].astype(np.float32)
    a_lw, a_k = _arviz_psis(lw)
    r = D.psis(jnp.asarray(lw))
    assert r.log_weights.dtype == jnp.float32
    assert abs(float(r.pareto_k) - a_k) < 1e-3 * max(1., abs(a_k)), name
    np.testing.assert_allclose(np.asarray(r.log_weights), a_lw, atol=1e-3,
                               err_msg=name)


def test_psis_normalize_false_keeps_scale_and_batches():
  lw = jnp.asarray(np.random.default_rng(1).normal(size=(3, 500)), jnp.float32)
  r = D.psis(lw + 7., normalize=False)
  chex.assert_shape(r.log_weights, (3, 500))
  chex.assert_shape(r.pareto_k, (3,))
  for i in range(3):
    a_lw, a_k = _arviz_psis(np.asarray(lw[i] + 7.))
    from_arviz_unnormalized = a_lw  # ArviZ normalizes; compare up to a shift
    d = np.asarray(r.log_weights[i]) - from_arviz_unnormalized
    assert np.ptp(d) < 1e-4
    assert abs(float(r.pareto_k[i]) - a_k) < 1e-3


def test_constant_weights_give_minus_inf_and_uniform_weights():
  r = D.psis(jnp.full((200,), 3.))
  assert float(r.pareto_k) == -np.inf
  np.testing.assert_allclose(np.exp(np.asarray(r.log_weights)), 1. / 200,
                             rtol=1e-6)


def test_psis_input_validation():
  with pytest.raises(ValueError, match="log_weights"):
    D.psis(jnp.asarray(1.))
  with pytest.raises(ValueError, match="reff"):
    D.psis(jnp.zeros(100), reff=0.)


def test_thresholds_and_messages():
  # Vehtari et al. 2024: min(1 - 1/log10(S), 0.7).
  assert D.pareto_k_threshold(100) == pytest.approx(0.5)
  assert D.pareto_k_threshold(1000) == pytest.approx(2. / 3.)
  assert D.pareto_k_threshold(100_000) == pytest.approx(0.7)
  # Yao et al. 2018.
  assert [D.pareto_k_message(k) for k in (0.2, 0.6, 0.9, float("nan"))] == [
      "good", "ok", "bad", "bad"]


def normal_normal_log_prob(z, x=5.):
  return distrax.Normal(0., 1.).log_prob(z) + distrax.Normal(z, 1.).log_prob(x)


NN_LOG_Z = float(distrax.Normal(0., math.sqrt(2.)).log_prob(5.))


def _exact_nn_params():
  scale = 1. / math.sqrt(2.)
  return {"loc": jnp.array([2.5]),
          "raw_scale": jnp.array([scale + math.log(-math.expm1(-scale))])}


def test_surrogate_equal_to_target_good_khat_and_exact_log_z():
  # q is the exact posterior N(2.5, 1/sqrt 2): log p - log q = log Z up to
  # float32 rounding, so k-hat is well below 0.5 and log Z is exact.
  s = vi.surrogates.mean_field_normal(())
  d = D.diagnose(normal_normal_log_prob, s, _exact_nn_params(),
                 jax.random.key(0), 4000)
  assert float(d.pareto_k) < 0.5
  assert abs(float(d.log_z) - NN_LOG_Z) < 1e-4
  assert float(d.ess) > 0.999 * 4000
  assert abs(float(d.elbo) - NN_LOG_Z) < 1e-4


def _regression(key, n=20, d=3, noise=0.5, prior_scale=1.5):
  kx, kw, ke = jax.random.split(key, 3)
  x = jax.random.normal(kx, (n, d))
  y = x @ jax.random.normal(kw, (d,)) + noise * jax.random.normal(ke, (n,))

  def log_prob(w):
    return (distrax.Normal(0., prior_scale).log_prob(w).sum() +
            distrax.Normal(x @ w, noise).log_prob(y).sum())
  # Evidence: y ~ N(0, noise^2 I + prior_scale^2 X X^T).
  cov = noise**2 * jnp.eye(n) + prior_scale**2 * x @ x.T
  log_z = tfd.MultivariateNormalFullCovariance(jnp.zeros(n), cov).log_prob(y)
  return log_prob, float(log_z)


def test_fitted_surrogate_log_z_within_two_standard_errors():
  log_prob, log_z = _regression(jax.random.key(3))
  s = vi.surrogates.full_rank_normal((3,))
  r = vi.fit(log_prob, s, optax.adam(optax.exponential_decay(0.05, 1000, 0.05)),
             1000, key=jax.random.key(4), sample_size=16)
  d = D.diagnose(log_prob, s, r.params, jax.random.key(5), 4000)
  assert float(d.pareto_k) < 0.5
  assert float(d.log_z_se) > 0.  # q is close to, not equal to, p
  assert abs(float(d.log_z) - log_z) < 2. * float(d.log_z_se)
  assert float(d.elbo) < log_z  # the ELBO is a lower bound
  # Over independent keys (vmap), the estimates scatter like their SEs say.
  ds = jax.jit(jax.vmap(lambda k: D.diagnose(log_prob, s, r.params, k, 1000)))(
      jax.random.split(jax.random.key(6), 16))
  z = (np.asarray(ds.log_z) - log_z) / np.asarray(ds.log_z_se)
  assert np.mean(np.abs(z) < 2.) >= 0.75


def test_too_narrow_gaussian_on_heavy_tailed_target_is_flagged():
  # Reverse-KL Gaussian fit to a Student-t(2): p/q has infinite variance.
  def log_prob(z):
    return tfd.StudentT(2., 0., 1.).log_prob(z).sum()
  s = vi.surrogates.mean_field_normal((5,))
  r = vi.fit(log_prob, s, optax.adam(optax.cosine_decay_schedule(0.05, 800)),
             800, key=jax.random.key(0), sample_size=16)
  z, lw = D.importance_log_weights(log_prob, s, r.params, jax.random.key(1),
                                   4000)
  chex.assert_shape(lw, (4000,))
  chex.assert_shape(z, (4000, 5))
  d = D.diagnose_log_weights(lw)
  assert float(d.pareto_k) > 0.7
  assert D.pareto_k_message(float(d.pareto_k)) == "bad"
  _, a_k = _arviz_psis(np.asarray(lw))
  assert abs(float(d.pareto_k) - a_k) < 1e-3 * max(1., abs(a_k))


def test_ess_and_log_z_match_closed_form_for_gaussian_proposal():
  # q = N(0, 1), p = c N(0, sigma^2): E_q[w^2] / E_q[w]^2 = 1/(sigma sqrt(2 -
  # sigma^2)), so ESS / S -> sigma sqrt(2 - sigma^2); log Z = c.
  sigma, c = 0.8, 1.7
  x = jax.random.normal(jax.random.key(0), (40_000,))
  lw = (distrax.Normal(0., sigma).log_prob(x) + c -
        distrax.Normal(0., 1.).log_prob(x))
  d = D.diagnose_log_weights(lw)
  assert abs(float(d.ess) / 40_000 - sigma * math.sqrt(2 - sigma**2)) < 0.01
  assert abs(float(d.log_z) - c) < 3. * float(d.log_z_se)
  assert float(d.pareto_k) < 0.5  # bounded ratios: sigma < 1


def test_psis_moments_correct_a_biased_proposal():
  # q = N(0, 1) fixed; target N(0.3, 0.8^2) (unnormalized): the PSIS moments
  # recover the target's (q's own are 0 and 1).
  q = vi.surrogates.mean_field_normal(())
  params = {"loc": jnp.zeros(1), "raw_scale": jnp.array([1. + math.log(
      -math.expm1(-1.))])}
  target = lambda z: distrax.Normal(0.3, 0.8).log_prob(z) + 4.
  m = D.psis_moments(target, q, params, jax.random.key(0), 20_000)
  assert float(m.pareto_k) < 0.5
  assert abs(float(m.mean) - 0.3) < 0.02
  assert abs(float(m.variance) - 0.64) < 0.03
  # A pytree transform: moments of (z, z^2).
  m2 = D.psis_moments(target, q, params, jax.random.key(0), 20_000,
                      transform=lambda z: {"z": z, "z2": z**2})
  assert abs(float(m2.mean["z2"]) - (0.64 + 0.09)) < 0.04


def test_weighted_moments_closed_form():
  draws = {"a": jnp.array([0., 1., 2.]), "b": jnp.array([[1., 1.], [3., 3.],
                                                         [5., 5.]])}
  mean, var = D.weighted_moments(draws, jnp.log(jnp.array([1., 2., 1.])))
  np.testing.assert_allclose(mean["a"], 1.)
  np.testing.assert_allclose(var["a"], 0.5)
  np.testing.assert_allclose(mean["b"], [3., 3.])
  np.testing.assert_allclose(var["b"], [2., 2.])


def test_jit_vmap_grad_compose():
  s = vi.surrogates.mean_field_normal(())
  params = {"loc": jnp.array([2.]), "raw_scale": jnp.array([0.])}

  @jax.jit
  @chex.assert_max_traces(n=1)
  def khat(p, key):
    return D.diagnose(normal_normal_log_prob, s, p, key, 1000).pareto_k

  keys = jax.random.split(jax.random.key(0), 4)
  k1 = khat(params, keys[0])
  khat(params, keys[1])  # no retrace
  ks = jax.jit(jax.vmap(lambda k: D.diagnose(normal_normal_log_prob, s, params,
                                              k, 1000).pareto_k))(keys)
  np.testing.assert_allclose(ks[0], k1, rtol=1e-5, atol=1e-6)
  # The importance-weighted bound log Z_hat is differentiable in params.
  g = jax.jit(jax.grad(lambda p: D.diagnose(
      normal_normal_log_prob, s, p, jax.random.key(0), 1000).log_z))(params)
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(g))
  # ... and so is the smoothed-weight PSIS output.
  gw = jax.jit(jax.grad(lambda lw: D.psis(lw).log_weights[0]))(
      jax.random.normal(jax.random.key(2), (200,)))
  assert np.all(np.isfinite(np.asarray(gw)))
