"""The negative ELBO against the closed-form KL between Gaussians."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np

import vi_jax as vi


def test_negative_elbo_equals_analytic_kl_for_a_normalized_gaussian_target():
  p = distrax.MultivariateNormalDiag(jnp.array([1., -1.]), jnp.array([0.5, 2.]))
  s = vi.surrogates.mean_field_normal((2,))
  params = {"loc": jnp.array([0.3, 0.2]), "raw_scale": jnp.array([0.1, 0.4])}
  q = distrax.MultivariateNormalDiag(params["loc"],
                                     jax.nn.softplus(params["raw_scale"]))
  kl = float(q.kl_divergence(p))  # log Z = 0: -ELBO = KL[q || p]
  loss = vi.losses.negative_elbo()(p.log_prob, s, params, jax.random.key(0),
                                   200_000)
  np.testing.assert_allclose(float(loss), kl, rtol=0.01)
  # The reparameterized gradient matches the analytic KL gradient.
  g = jax.grad(lambda pr: vi.losses.negative_elbo()(
      p.log_prob, s, pr, jax.random.key(1), 100_000))(params)
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
  g = jax.grad(lambda pr: vi.losses.negative_elbo(stick_the_landing=True)(
      p.log_prob, s, pr, jax.random.key(0), 3))(params)
  np.testing.assert_allclose(np.asarray(g["loc"]), 0., atol=1e-5)
  np.testing.assert_allclose(np.asarray(g["raw_scale"]), 0., atol=1e-5)
