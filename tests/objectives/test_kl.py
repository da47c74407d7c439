"""KL utilities against closed forms and TFP's registry."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

tfd = tfp.distributions


def _normal_kl(m1, s1, m2, s2):
  return np.log(s2 / s1) + (s1**2 + (m1 - m2)**2) / (2 * s2**2) - 0.5


def test_closed_form_kl_matches_the_normal_formula_and_seed_002_values():
  p = distrax.Normal(1., 4.)
  # Seed 002: KL(N(0, 2) || N(1, 4)) = 0.35, KL(N(1, 3) || N(1, 4)) = 0.07.
  np.testing.assert_allclose(vi.kl_divergence(distrax.Normal(0., 2.), p),
                             _normal_kl(0., 2., 1., 4.), rtol=1e-6)
  np.testing.assert_allclose(vi.kl_divergence(distrax.Normal(0., 2.), p), 0.35,
                             atol=0.005)
  np.testing.assert_allclose(vi.kl_divergence(distrax.Normal(1., 3.), p), 0.07,
                             atol=0.005)
  # Mixed distrax / TFP pairs and batch shapes.
  got = vi.kl_divergence(tfd.Normal(jnp.zeros(3), 1.),
                         distrax.Normal(jnp.arange(3.), 2.))
  np.testing.assert_allclose(got, _normal_kl(0., 1., np.arange(3.), 2.),
                             rtol=1e-6)


def test_no_closed_form_raises_and_monte_carlo_is_accurate_for_a_mixture():
  q = distrax.Normal(0.5, 1.)
  mix = distrax.MixtureSameFamily(
      distrax.Categorical(probs=jnp.array([.3, .7])),
      distrax.Normal(jnp.array([-1., 2.]), jnp.array([.5, 1.])))
  assert not vi.kl.has_closed_form_kl(q, mix)
  assert vi.kl.has_closed_form_kl(q, distrax.Normal(0., 1.))
  with pytest.raises(NotImplementedError, match="monte_carlo_kl"):
    vi.kl_divergence(q, mix)
  # Reference: E_q[log q - log p] by Gauss-Hermite quadrature (80 nodes).
  x, w = np.polynomial.hermite_e.hermegauss(80)
  z = 0.5 + x
  ref = np.sum(w * (np.asarray(q.log_prob(z)) - np.asarray(mix.log_prob(z))))
  ref /= np.sqrt(2 * np.pi)
  est = vi.monte_carlo_kl(q, mix, jax.random.key(0), 200_000)
  np.testing.assert_allclose(est, ref, rtol=0.01)


def test_monte_carlo_kl_agrees_with_closed_form_and_its_gradient():
  p = distrax.MultivariateNormalDiag(jnp.array([1., -1.]), jnp.array([.5, 2.]))

  def q_of(theta):
    return distrax.MultivariateNormalDiag(theta[:2], jax.nn.softplus(theta[2:]))

  theta = jnp.array([0.2, 0.3, 0.1, 0.4])
  exact = vi.kl_divergence(q_of(theta), p)
  mc = vi.monte_carlo_kl(q_of(theta), p, jax.random.key(1), 200_000)
  np.testing.assert_allclose(mc, exact, rtol=0.01)
  g_exact = jax.grad(lambda t: vi.kl_divergence(q_of(t), p))(theta)
  g_mc = jax.jit(jax.grad(lambda t: vi.monte_carlo_kl(
      q_of(t), p, jax.random.key(2), 200_000)))(theta)
  np.testing.assert_allclose(g_mc, g_exact, atol=0.02)
  # vmap over keys.
  many = jax.vmap(lambda k: vi.monte_carlo_kl(q_of(theta), p, k, 1000))(
      jax.random.split(jax.random.key(3), 4))
  assert many.shape == (4,)


def test_minimizing_monte_carlo_kl_to_a_mixture_fits_its_dominant_mode():
  # Seed 002, G4: fit N(m, s) to a Gaussian mixture by minimizing the Monte
  # Carlo KL[q || p]; reverse KL is mode-seeking, so q lands on the heavy mode
  # N(2, 1) (weight 0.9 and far from the other): m ~ 2, s ~ 1.
  mix = distrax.MixtureSameFamily(
      distrax.Categorical(probs=jnp.array([.1, .9])),
      distrax.Normal(jnp.array([-4., 2.]), jnp.array([.5, 1.])))

  def loss(theta, key):
    q = distrax.Normal(theta[0], jax.nn.softplus(theta[1]))
    return vi.monte_carlo_kl(q, mix, key, 64)

  opt = optax.adam(0.05)

  def step(carry, key):
    theta, state = carry
    g = jax.grad(loss)(theta, key)
    upd, state = opt.update(g, state)
    return (optax.apply_updates(theta, upd), state), None

  theta0 = jnp.array([0., 0.5])
  (theta, _), _ = jax.lax.scan(step, (theta0, opt.init(theta0)),
                               jax.random.split(jax.random.key(0), 1000))
  np.testing.assert_allclose(theta[0], 2., atol=0.15)
  np.testing.assert_allclose(jax.nn.softplus(theta[1]), 1., atol=0.15)


def test_bad_inputs_raise():
  with pytest.raises(TypeError, match="q must"):
    vi.kl_divergence(3., distrax.Normal(0., 1.))
  with pytest.raises(ValueError, match="sample_size"):
    vi.monte_carlo_kl(distrax.Normal(0., 1.), distrax.Normal(0., 1.),
                      jax.random.key(0), 0)
