"""Variational objectives and gradient estimators against closed forms.

References: closed-form Gaussian KLs and their gradients, TFP's
csiszar_divergence_test (setups and tolerances), exact posteriors of
conjugate or enumerable models, and the bounds' known orderings.
"""

import functools

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi
from vi_jax.objectives import csiszar

tfd = tfp.distributions


def _value(loss, target, surrogate, params, key, sample_size):
  """The loss evaluated under jit (one compile instead of op-by-op dispatch)."""
  return jax.jit(lambda pr, k: loss(target, surrogate, pr, k, sample_size))(
      params, key)


def test_negative_elbo_equals_analytic_kl_for_a_normalized_gaussian_target():
  p = distrax.MultivariateNormalDiag(jnp.array([1., -1.]), jnp.array([0.5, 2.]))
  s = vi.surrogates.mean_field_normal((2,))
  params = {"loc": jnp.array([0.3, 0.2]), "raw_scale": jnp.array([0.1, 0.4])}
  q = distrax.MultivariateNormalDiag(params["loc"],
                                     jax.nn.softplus(params["raw_scale"]))
  kl = float(q.kl_divergence(p))  # log Z = 0: -ELBO = KL[q || p]
  loss = _value(vi.losses.negative_elbo(), p.log_prob, s, params,
                jax.random.key(0), 200_000)
  np.testing.assert_allclose(float(loss), kl, rtol=0.01)
  # The reparameterized gradient matches the analytic KL gradient.
  g = jax.jit(jax.grad(lambda pr: vi.losses.negative_elbo()(
      p.log_prob, s, pr, jax.random.key(1), 100_000)))(params)
  g_ref = jax.grad(lambda pr: distrax.MultivariateNormalDiag(
      pr["loc"], jax.nn.softplus(pr["raw_scale"])).kl_divergence(p))(params)
  np.testing.assert_allclose(np.asarray(g["loc"]), np.asarray(g_ref["loc"]),
                             atol=0.02)
  np.testing.assert_allclose(np.asarray(g["raw_scale"]),
                             np.asarray(g_ref["raw_scale"]), atol=0.02)


def test_stick_the_landing_gradient_vanishes_at_the_exact_posterior():
  p = distrax.MultivariateNormalDiag(jnp.array([1., -1.]), jnp.array([0.5, 2.]))
  s = vi.surrogates.mean_field_normal((2,))
  raw = jnp.log(jnp.expm1(jnp.array([0.5, 2.])))
  params = {"loc": jnp.array([1., -1.]), "raw_scale": raw}
  g = jax.jit(jax.grad(lambda pr: vi.losses.negative_elbo(
      stick_the_landing=True)(p.log_prob, s, pr, jax.random.key(0), 3)))(params)
  np.testing.assert_allclose(np.asarray(g["loc"]), 0., atol=1e-5)
  np.testing.assert_allclose(np.asarray(g["raw_scale"]), 0., atol=1e-5)


def _tridiag(d, diag_value, offdiag_value):
  """TFP's test helper: d x d with one super/sub diagonal."""
  m = np.eye(d) * (diag_value - offdiag_value)
  band = np.triu(np.tril(np.full((d, d), offdiag_value), 1), -1)
  return m + band


def _tfp_multidim_pair():
  """TFP csiszar_divergence_test's multidim setup: p = MVN(0, tridiag(5, 1, .5)),
  q = MVNDiag(0, 1) as vi_jax mean-field params."""
  d = 5
  p = tfd.MultivariateNormalFullCovariance(
      loc=jnp.zeros(d), covariance_matrix=jnp.asarray(_tridiag(d, 1., .5),
                                                       jnp.float32))
  s = vi.surrogates.mean_field_normal((d,))
  params = {"loc": jnp.zeros(d), "raw_scale": jnp.full((d,), np.log(np.e - 1.))}
  q = tfd.MultivariateNormalDiag(jnp.zeros(d), jnp.ones(d))
  return p, s, params, q


def test_monte_carlo_reverse_kl_matches_analytic_with_tfp_tolerances():
  # TFP's test_kl_reverse_multidim: 6e5 draws, rtol 0.02 (plain), 0.14 (self-
  # normalized).
  p, s, params, q = _tfp_multidim_pair()
  exact = float(tfd.kl_divergence(q, p))
  key = jax.random.key(0)
  plain = _value(vi.losses.monte_carlo_variational_loss(csiszar.kl_reverse),
                 p.log_prob, s, params, key, 600_000)
  sn = _value(vi.losses.monte_carlo_variational_loss(
      functools.partial(csiszar.kl_reverse, self_normalized=True)),
              p.log_prob, s, params, key, 600_000)
  elbo = _value(vi.losses.negative_elbo(), p.log_prob, s, params, key,
                600_000)
  np.testing.assert_allclose(plain, exact, rtol=0.02)
  np.testing.assert_allclose(sn, exact, rtol=0.14)
  np.testing.assert_allclose(elbo, exact, rtol=0.02)


def test_monte_carlo_forward_kl_matches_analytic_with_tfp_tolerances():
  # TFP's test_kl_forward_multidim: 6e5 draws, rtol 0.14 for both forms; the
  # SNIS `forward_kl` loss is held to the same tolerance.
  p, s, params, q = _tfp_multidim_pair()
  exact = float(tfd.kl_divergence(p, q))
  key = jax.random.key(1)
  plain = _value(vi.losses.monte_carlo_variational_loss(csiszar.kl_forward),
                 p.log_prob, s, params, key, 600_000)
  sn = _value(vi.losses.monte_carlo_variational_loss(
      functools.partial(csiszar.kl_forward, self_normalized=True)),
              p.log_prob, s, params, key, 600_000)
  snis = _value(vi.losses.forward_kl(), p.log_prob, s, params, key, 600_000)
  np.testing.assert_allclose(plain, exact, rtol=0.14)
  np.testing.assert_allclose(sn, exact, rtol=0.14)
  np.testing.assert_allclose(snis, exact, rtol=0.14)


def _gaussian_pair():
  p = distrax.MultivariateNormalDiag(jnp.array([1., -1.]), jnp.array([0.5, 2.]))
  s = vi.surrogates.mean_field_normal((2,))
  params = {"loc": jnp.array([0.3, 0.2]), "raw_scale": jnp.array([0.1, 0.4])}
  exact_grad = jax.grad(lambda pr: distrax.MultivariateNormalDiag(
      pr["loc"], jax.nn.softplus(pr["raw_scale"])).kl_divergence(p))(params)
  return p, s, params, exact_grad


def _grad_batches(loss, target, s, params, num_batches, sample_size, seed=0):
  """Per-batch gradient estimates `[num_batches, ...]` (independent keys)."""
  keys = jax.random.split(jax.random.key(seed), num_batches)
  return jax.jit(jax.vmap(lambda k: jax.grad(
      lambda pr: loss(target, s, pr, k, sample_size))(params)))(keys)


def _assert_unbiased(batches, exact, num_se=4.):
  """|mean - exact| <= num_se standard errors (+1e-4 for float32 rounding)."""
  for name in exact:
    b = np.asarray(batches[name], np.float64)
    mean = b.mean(axis=0)
    se = b.std(axis=0, ddof=1) / np.sqrt(b.shape[0])
    np.testing.assert_array_less(np.abs(mean - np.asarray(exact[name])),
                                 num_se * se + 1e-4)


@pytest.mark.parametrize("estimator", ["reparameterization", "score_function"])
def test_gradient_estimators_are_unbiased_for_the_gaussian_kl(estimator):
  p, s, params, exact = _gaussian_pair()
  loss = vi.losses.negative_elbo(gradient_estimator=estimator)
  batches = _grad_batches(loss, p.log_prob, s, params, 40, 5_000)
  _assert_unbiased(batches, exact)
  # And, as in TFP's test_score_trick, the pooled estimate is within a few
  # percent of the analytic gradient (tolerance 0.05 absolute here).
  for name in exact:
    np.testing.assert_allclose(np.mean(batches[name], axis=0), exact[name],
                               atol=0.05)


def test_score_function_baseline_reduces_variance():
  # The leave-one-out baseline: same expectation, lower variance than plain
  # REINFORCE (the DiCE surrogate without baseline, written out here).
  p, s, params, exact = _gaussian_pair()

  def plain_reinforce(target, s, pr, key, n):
    z, _ = s.sample_and_log_prob(pr, key, n)
    z = jax.lax.stop_gradient(z)
    log_q = s.log_prob(pr, z)
    f = log_q - jax.vmap(target)(z)
    return jnp.mean(f + jax.lax.stop_gradient(f) * (log_q - jax.lax.stop_gradient(log_q)))

  sf = vi.losses.negative_elbo(gradient_estimator="score_function")
  with_b = _grad_batches(sf, p.log_prob, s, params, 200, 8, seed=3)
  without = _grad_batches(plain_reinforce, p.log_prob, s, params, 200, 8, seed=3)
  _assert_unbiased(with_b, exact)
  _assert_unbiased(without, exact)
  var_b = sum(np.var(np.asarray(with_b[k]), axis=0).sum() for k in exact)
  var_0 = sum(np.var(np.asarray(without[k]), axis=0).sum() for k in exact)
  assert var_b < var_0, (var_b, var_0)


def test_sticking_the_landing_and_dreg_vanish_at_the_exact_posterior():
  p = distrax.MultivariateNormalDiag(jnp.array([1., -1.]), jnp.array([0.5, 2.]))
  s = vi.surrogates.mean_field_normal((2,))
  params = {"loc": jnp.array([1., -1.]),
            "raw_scale": jnp.log(jnp.expm1(jnp.array([0.5, 2.])))}
  log_z = 0.7  # An unnormalized target: log p + 0.7.
  target = lambda z: p.log_prob(z) + log_z
  for loss in (vi.losses.negative_elbo(gradient_estimator="doubly_reparameterized"),
               vi.losses.iwae(8, gradient_estimator="doubly_reparameterized")):
    g = jax.jit(jax.grad(lambda pr, loss=loss: loss(
        target, s, pr, jax.random.key(0), 5)))(params)
    chex.assert_trees_all_close(g, jax.tree_util.tree_map(jnp.zeros_like, g),
                                atol=1e-5)
  # In float64 the STL gradient is zero to rounding (it is exactly 0. when
  # run op by op; XLA's fusion under jit leaves ~1e-18).
  with jax.enable_x64(True):
    s64 = vi.surrogates.mean_field_normal((2,), dtype=jnp.float64)
    p64 = distrax.MultivariateNormalDiag(jnp.array([1., -1.]),
                                         jnp.array([0.5, 2.]))
    params64 = {"loc": jnp.array([1., -1.]),
                "raw_scale": jnp.log(jnp.expm1(jnp.array([0.5, 2.])))}
    g = jax.jit(jax.grad(lambda pr: vi.losses.negative_elbo(
        stick_the_landing=True)(p64.log_prob, s64, pr, jax.random.key(0), 5)))(
            params64)
    for leaf in jax.tree_util.tree_leaves(g):
      assert leaf.dtype == jnp.float64
      np.testing.assert_allclose(leaf, 0., atol=1e-15)
  # The plain reparameterized ELBO gradient is not zero there (it is noise).
  g = jax.jit(jax.grad(lambda pr: vi.losses.negative_elbo()(
      target, s, pr, jax.random.key(0), 5)))(params)
  assert np.abs(np.asarray(g["raw_scale"])).max() > 1e-2


def test_dreg_has_the_iwae_expectation_and_lower_variance():
  # Tucker et al. 2018: same expected gradient as the reparameterized IWAE
  # gradient, lower variance for the surrogate's params.
  p = distrax.MultivariateNormalDiag(jnp.array([1., -1.]), jnp.array([0.5, 2.]))
  s = vi.surrogates.mean_field_normal((2,))
  params = {"loc": jnp.array([0.6, -0.4]), "raw_scale": jnp.array([0.2, 1.2])}
  k = 16
  plain = _grad_batches(vi.losses.iwae(k), p.log_prob, s, params, 4000, 1,
                        seed=5)
  dreg = _grad_batches(vi.losses.iwae(k, gradient_estimator="doubly_reparameterized"),
                       p.log_prob, s, params, 4000, 1, seed=6)
  for name in params:
    a = np.asarray(plain[name], np.float64)
    b = np.asarray(dreg[name], np.float64)
    se = np.sqrt(a.var(axis=0) / len(a) + b.var(axis=0) / len(b))
    np.testing.assert_array_less(np.abs(a.mean(axis=0) - b.mean(axis=0)),
                                 4 * se + 1e-4)
    np.testing.assert_array_less(b.var(axis=0), a.var(axis=0))


def _unnormalized_gaussian_target():
  p = distrax.MultivariateNormalDiag(jnp.array([1., -1.]), jnp.array([0.5, 2.]))
  log_z = 1.3
  s = vi.surrogates.mean_field_normal((2,))
  params = {"loc": jnp.array([0.5, 0.]), "raw_scale": jnp.array([0.0, 0.0])}
  return (lambda z: p.log_prob(z) + log_z), log_z, s, params


def test_iwae_bounds_are_ordered_up_to_log_z():
  target, log_z, s, params = _unnormalized_gaussian_target()

  @jax.jit
  def bounds(key):
    b = lambda loss: -loss(target, s, params, key, 20_000)
    return (b(vi.losses.negative_elbo()), b(vi.losses.iwae(4)),
            b(vi.losses.iwae(64)))

  elbo, iwae_4, iwae_64 = map(float, bounds(jax.random.key(2)))
  assert elbo < iwae_4 < iwae_64 < log_z, (elbo, iwae_4, iwae_64, log_z)
  # The ELBO gap is KL[q || p] in closed form.
  q = distrax.MultivariateNormalDiag(params["loc"],
                                     jax.nn.softplus(params["raw_scale"]))
  p = distrax.MultivariateNormalDiag(jnp.array([1., -1.]), jnp.array([0.5, 2.]))
  np.testing.assert_allclose(log_z - elbo, q.kl_divergence(p), rtol=0.02)


def test_renyi_alpha_zero_is_iwae_and_alpha_one_is_the_elbo():
  target, _, s, params = _unnormalized_gaussian_target()

  @jax.jit
  def values(key):
    small = lambda loss, n=500: loss(target, s, params, key, n)
    big = lambda loss: loss(target, s, params, key, 4000)
    return {
        "renyi0": small(vi.losses.renyi(0., 8)), "iwae": small(vi.losses.iwae(8)),
        "renyi1": small(vi.losses.renyi(1., 1)),
        "elbo": small(vi.losses.negative_elbo()),
        "renyi0_default": small(vi.losses.renyi(0.), 8),
        "iwae_one_group": small(vi.losses.iwae(8), 1),
        "big": [big(vi.losses.renyi(a, 8)) for a in (-1., 0., 0.5, 1.)],
        "near_one": big(vi.losses.renyi(1. - 1e-3, 8)),
    }

  v = values(jax.random.key(3))
  np.testing.assert_allclose(v["renyi0"], v["iwae"], rtol=1e-6)
  np.testing.assert_allclose(v["renyi1"], v["elbo"], rtol=1e-6)
  # One group of all draws by default (K = sample_size).
  np.testing.assert_allclose(v["renyi0_default"], v["iwae_one_group"],
                             rtol=1e-6)
  # alpha -> 1 is continuous (Li & Turner 2016, thm 1): the gap is
  # (1 - alpha) Var[log w] / 2 + O((1 - alpha)^2) ~ 1e-3 here. The bound is
  # non-increasing in alpha (their fig. 1): VR_{-1} >= IWAE >= VR_.5 >= ELBO.
  elbo = v["big"][3]
  np.testing.assert_allclose(v["near_one"], elbo, atol=3e-3)
  assert abs(v["big"][2] - elbo) > 3e-2
  bounds = [-float(x) for x in v["big"]]
  assert bounds == sorted(bounds, reverse=True), bounds


def _normal_normal():
  def log_prob(z):
    return distrax.Normal(0., 1.).log_prob(z) + distrax.Normal(z, 1.).log_prob(5.)
  return log_prob


def test_forward_kl_fit_recovers_the_normal_normal_posterior():
  # Seed 000: z ~ N(0, 1), x ~ N(z, 1), x = 5: posterior N(2.5, 1/sqrt(2)).
  s = vi.surrogates.mean_field_normal((), init_scale=1.)
  opt = optax.adam(optax.cosine_decay_schedule(0.1, 1500, alpha=0.01))
  fit = jax.jit(jax.vmap(lambda k: vi.fit(
      _normal_normal(), s, opt, 1500, key=k, sample_size=32,
      loss=vi.losses.forward_kl()).params))
  params = fit(jax.random.split(jax.random.key(0), 4))
  loc = np.asarray(params["loc"]).ravel()
  scale = np.asarray(jax.nn.softplus(params["raw_scale"])).ravel()
  np.testing.assert_array_less(np.abs(loc - 2.5), 0.05)
  np.testing.assert_array_less(np.abs(scale / np.sqrt(0.5) - 1.), 0.10)


def test_score_function_fit_recovers_a_discrete_posterior():
  # A categorical latent z in {0..3} with prior pi and x | z ~ N(mu_z, 1):
  # the exact posterior is softmax(log pi + log N(x; mu, 1)), and the
  # categorical surrogate family contains it. `fit`'s default loss picks the
  # score-function estimator because the surrogate is not reparameterized.
  # Tolerance: over 8 seeds the largest probability error was < 0.02 with
  # 16 draws x 1500 cosine-decayed Adam steps; 0.05 leaves 2.5x margin.
  mus = jnp.array([-2., 0., 1., 3.])
  log_prior = jnp.log(jnp.array([.1, .2, .3, .4]))
  x = 0.8
  log_p = lambda z: log_prior[z] + distrax.Normal(mus[z], 1.).log_prob(x)
  exact = jax.nn.softmax(log_prior + distrax.Normal(mus, 1.).log_prob(x))
  s = vi.surrogates.categorical(4)
  opt = optax.adam(optax.cosine_decay_schedule(0.1, 1500, alpha=0.01))
  fit = jax.jit(jax.vmap(lambda k: vi.fit(log_p, s, opt, 1500, key=k,
                                          sample_size=16).params))
  probs = jax.nn.softmax(fit(jax.random.split(jax.random.key(1), 2))["logits"])
  np.testing.assert_array_less(np.abs(probs - exact), 0.05)


def test_analytic_kl_elbo_matches_the_closed_form_bound():
  # prior N(0, I), log lik = log N(x; z, I): E_q[log lik] is closed form,
  # log N(x; m, 1) - s^2/2 per coordinate; the KL is MVNDiag-MVNDiag.
  x = jnp.array([1.5, -0.5, 0.3])
  prior = distrax.MultivariateNormalDiag(jnp.zeros(3), jnp.ones(3))
  log_lik = lambda z: jnp.sum(distrax.Normal(z, 1.).log_prob(x))
  s = vi.surrogates.mean_field_normal((3,))
  params = {"loc": jnp.array([0.5, 0.1, -0.2]),
            "raw_scale": jnp.array([0.3, -0.5, 0.0])}
  q = s.distribution_fn(params)
  m, sd = params["loc"], jax.nn.softplus(params["raw_scale"])
  exp_ll = jnp.sum(distrax.Normal(m, 1.).log_prob(x) - sd**2 / 2)
  kl = q.kl_divergence(prior)
  key = jax.random.key(0)
  for beta in (1., 0.5):
    loss = vi.losses.analytic_kl_elbo(prior, log_lik, kl_scaling=beta)
    got = _value(loss, None, s, params, key, 200_000)
    np.testing.assert_allclose(got, -exp_ll + beta * kl, rtol=2e-3)
  # The closed-form KL is differentiated exactly: with a likelihood that
  # ignores z the gradient is the analytic KL gradient for any key.
  loss = vi.losses.analytic_kl_elbo(prior, lambda z: 0. * jnp.sum(z))
  g = jax.jit(jax.grad(lambda pr: loss(None, s, pr, key, 1)))(params)
  g_ref = jax.grad(lambda pr: s.distribution_fn(pr).kl_divergence(prior))(params)
  chex.assert_trees_all_close(g, g_ref, atol=1e-6)


def test_analytic_kl_elbo_falls_back_to_monte_carlo_kl():
  # A mixture prior has no closed-form KL: the loss then equals the ELBO of
  # the joint target on the same draws.
  prior = distrax.MixtureSameFamily(
      distrax.Categorical(probs=jnp.array([.3, .7])),
      distrax.Independent(distrax.Normal(jnp.array([[-1., 0.], [2., 1.]]),
                                         jnp.ones((2, 2))), 1))
  log_lik = lambda z: jnp.sum(distrax.Normal(z, 1.).log_prob(jnp.array([1., 2.])))
  s = vi.surrogates.mean_field_normal((2,))
  params = {"loc": jnp.array([0.5, 0.1]), "raw_scale": jnp.array([0.3, -0.5])}
  key = jax.random.key(4)
  got = _value(vi.losses.analytic_kl_elbo(prior, log_lik), None, s, params,
               key, 64)
  ref = _value(vi.losses.negative_elbo(),
               lambda z: prior.log_prob(z) + log_lik(z), s, params, key, 64)
  np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_analytic_kl_elbo_with_discrete_latents_recovers_the_posterior():
  # Three independent bits, prior Bernoulli(0.3), x_i | z_i ~ N(2 z_i, 1):
  # posterior logits = logit(0.3) + log N(x; 2, 1) - log N(x; 0, 1). The
  # Bernoulli-Bernoulli KL is closed form; E_q[log lik] goes through the
  # score function (selected automatically). Tolerance as in the categorical
  # test (errors < 0.02 observed).
  x = jnp.array([1.5, -0.5, 0.9])
  prior = distrax.Independent(distrax.Bernoulli(probs=jnp.full(3, 0.3)), 1)
  log_lik = lambda z: jnp.sum(distrax.Normal(2. * z, 1.).log_prob(x))
  exact = jax.nn.sigmoid(jnp.log(0.3 / 0.7) + distrax.Normal(2., 1.).log_prob(x)
                         - distrax.Normal(0., 1.).log_prob(x))
  s = vi.surrogates.bernoulli((3,))
  opt = optax.adam(optax.cosine_decay_schedule(0.1, 1500, alpha=0.01))
  result = vi.fit(lambda z: prior.log_prob(z) + log_lik(z), s, opt, 1500,
                  key=jax.random.key(2), sample_size=16,
                  loss=vi.losses.analytic_kl_elbo(prior, log_lik))
  np.testing.assert_array_less(
      np.abs(jax.nn.sigmoid(result.params["logits"]) - exact), 0.05)


def test_per_latent_kl_scaling_needs_a_factorized_surrogate():
  prior = {"a": distrax.Normal(0., 1.), "b": distrax.Normal(0., 1.)}
  s = vi.surrogates.mean_field_normal({"a": (), "b": ()})
  params = s.init(jax.random.key(0))
  log_lik = lambda a, b: -0.5 * (a - 1.)**2 - 0.5 * (b + 1.)**2
  same = vi.losses.analytic_kl_elbo(prior, log_lik, kl_scaling={"a": 2., "b": 2.})
  assert np.isfinite(same(None, s, params, jax.random.key(1), 4))
  differ = vi.losses.analytic_kl_elbo(prior, log_lik,
                                      kl_scaling={"a": 1., "b": 0.5})
  with pytest.raises(ValueError, match="per-latent kl_scaling"):
    differ(None, s, params, jax.random.key(1), 4)
  with pytest.raises(ValueError, match="kl_scaling"):
    vi.losses.analytic_kl_elbo(prior, log_lik, kl_scaling={"a": 1.})


def test_losses_compose_with_fit_jit_vmap_and_compile_once():
  target, _, s, params = _unnormalized_gaussian_target()
  losses = [vi.losses.forward_kl(),
            vi.losses.iwae(4, gradient_estimator="doubly_reparameterized"),
            vi.losses.monte_carlo_variational_loss(
                functools.partial(csiszar.jensen_shannon, self_normalized=True),
                importance_sample_size=2)]
  for loss in losses:
    traces = []

    def one(pr, k, loss=loss, traces=traces):
      traces.append(1)  # Runs once per trace.
      return loss(target, s, pr, k, 4)

    f = jax.jit(one)
    v1 = f(params, jax.random.key(0))
    f(params, jax.random.key(1))
    assert len(traces) == 1
    vals = jax.jit(jax.vmap(lambda k, one=one: one(params, k)))(
        jax.random.split(jax.random.key(2), 3))
    assert vals.shape == (3,) and np.all(np.isfinite(vals)) and np.isfinite(v1)
    g = jax.jit(jax.grad(one))(params, jax.random.key(0))
    assert all(np.all(np.isfinite(l)) for l in jax.tree_util.tree_leaves(g))
  result = vi.fit(target, s, optax.adam(0.1), 100, key=jax.random.key(0),
                  sample_size=4, loss=losses[1])
  np.testing.assert_allclose(result.params["loc"], [1., -1.], atol=0.3)


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="gradient_estimator"):
    vi.losses.negative_elbo(gradient_estimator="reinforce")
  with pytest.raises(ValueError, match="stick_the_landing"):
    vi.losses.negative_elbo(stick_the_landing=True,
                            gradient_estimator="score_function")
  with pytest.raises(ValueError, match="importance_sample_size"):
    vi.losses.iwae(0)
  with pytest.raises(TypeError, match="importance_sample_size"):
    vi.losses.iwae(2.5)
  with pytest.raises(TypeError, match="alpha"):
    vi.losses.renyi("half")
  with pytest.raises(TypeError, match="discrepancy_fn"):
    vi.losses.monte_carlo_variational_loss(3.)
  with pytest.raises(TypeError, match="log_likelihood_fn"):
    vi.losses.analytic_kl_elbo(distrax.Normal(0., 1.), None)
  with pytest.raises(TypeError, match="prior"):
    vi.losses.analytic_kl_elbo(3., lambda z: z)
  s = vi.surrogates.bernoulli((2,))
  with pytest.raises(ValueError, match="reparameterized"):
    vi.losses.negative_elbo(gradient_estimator="reparameterization")(
        lambda z: 0. * jnp.sum(z), s, s.init(None), jax.random.key(0), 2)
  with pytest.raises(ValueError, match="sample_size >= 2"):
    target, _, s2, params = _unnormalized_gaussian_target()
    vi.losses.forward_kl()(target, s2, params, jax.random.key(0), 1)


def test_per_latent_kl_scaling_with_a_factorized_surrogate():
  # A hand-built surrogate q(a, b) = N(a; m_a, s_a) N(b; m_b, s_b) whose
  # distribution_fn returns one distribution per latent: each latent's KL gets
  # its own beta, E_q[log lik] is closed form for a Gaussian likelihood.
  def dists(pr):
    return {"a": distrax.Normal(pr["m"][0], pr["s"][0]),
            "b": distrax.Normal(pr["m"][1], pr["s"][1])}

  def sample_and_log_prob(pr, key, n):
    ka, kb = jax.random.split(key)
    d = dists(pr)
    za, la = d["a"].sample_and_log_prob(seed=ka, sample_shape=(n,))
    zb, lb = d["b"].sample_and_log_prob(seed=kb, sample_shape=(n,))
    return {"a": za, "b": zb}, la + lb

  def log_prob(pr, z):
    d = dists(pr)
    return d["a"].log_prob(z["a"]) + d["b"].log_prob(z["b"])

  s = vi.Surrogate(init=lambda key: None, sample_and_log_prob=sample_and_log_prob,
                   log_prob=log_prob, distribution_fn=dists)
  params = {"m": jnp.array([0.4, -0.3]), "s": jnp.array([0.8, 1.3])}
  prior = {"a": distrax.Normal(0., 1.), "b": distrax.Normal(1., 2.)}
  log_lik = lambda a, b: (distrax.Normal(a, 1.).log_prob(0.5) +
                          distrax.Normal(b, 1.).log_prob(-1.))
  exp_ll = (distrax.Normal(0.4, 1.).log_prob(0.5) - 0.8**2 / 2 +
            distrax.Normal(-0.3, 1.).log_prob(-1.) - 1.3**2 / 2)
  kls = {k: dists(params)[k].kl_divergence(prior[k]) for k in prior}
  loss = vi.losses.analytic_kl_elbo(prior, log_lik,
                                    kl_scaling={"a": 1., "b": 0.25})
  got = _value(loss, None, s, params, jax.random.key(0), 200_000)
  np.testing.assert_allclose(got, -exp_ll + kls["a"] + 0.25 * kls["b"],
                             rtol=2e-3)
