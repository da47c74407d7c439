"""Gradients of every loss and of fit w.r.t. an array the target closes over.

Conjugate Normal-Normal model with a learned prior mean m:
  z ~ N(m, 1),  x | z ~ N(z, 1),  log Z(m) = log N(x; m, 2),
  d log Z / dm = (x - m) / 2 (Fisher's identity: E_post[z - m]).
"""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vi_jax as vi

X = 3.


def joint(m):
  return lambda z: (distrax.Normal(m, 1.).log_prob(z) +
                    distrax.Normal(z, 1.).log_prob(X))


def posterior_params(m):  # q = the exact posterior N((m + x) / 2, 1/2)
  scale = np.sqrt(0.5)
  return {"loc": jnp.full((1,), (m + X) / 2),
          "raw_scale": jnp.full((1,), np.log(np.expm1(scale)))}


LOSSES = {
    "negative_elbo": lambda m: vi.losses.negative_elbo(),
    "stick_the_landing": lambda m: vi.losses.negative_elbo(
        stick_the_landing=True),
    "score_function": lambda m: vi.losses.negative_elbo(
        gradient_estimator="score_function"),
    "iwae": lambda m: vi.losses.iwae(4),
    "iwae_dreg": lambda m: vi.losses.iwae(
        4, gradient_estimator="doubly_reparameterized"),
    "renyi": lambda m: vi.losses.renyi(0.5),
    "forward_kl": lambda m: vi.losses.forward_kl(),
    "chi2": lambda m: vi.losses.monte_carlo_variational_loss(
        vi.csiszar.kl_forward),
    "analytic_kl": lambda m: vi.losses.analytic_kl_elbo(
        distrax.Normal(m, 1.), lambda z: distrax.Normal(z, 1.).log_prob(X)),
}


def loss_at(name, m, params, sample_size, key=jax.random.key(1)):
  s = vi.surrogates.mean_field_normal(())
  return LOSSES[name](m)(joint(m), s, params, key, sample_size)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_grad_wrt_closed_over_prior_mean_matches_finite_differences(name):
  with jax.enable_x64(True):
    params = posterior_params(0.2)
    f = jax.jit(lambda m: loss_at(name, m, params, 8))
    m, eps = 0.5, 1e-5
    fd = (f(m + eps) - f(m - eps)) / (2 * eps)
    g = jax.grad(f)(m)
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-3, atol=1e-8)
    np.testing.assert_allclose(float(jax.jacfwd(f)(m)), float(fd), rtol=1e-3,
                               atol=1e-8)
    # Under vmap over prior means, each gradient is its own.
    ms = jnp.array([0.5, -1.])
    np.testing.assert_allclose(np.asarray(jax.vmap(jax.grad(f))(ms))[0],
                               float(g), rtol=1e-10)


@pytest.mark.parametrize("name", ["negative_elbo", "iwae", "renyi"])
def test_grad_at_the_posterior_is_the_evidence_gradient(name):
  # With q the exact posterior at m, -loss is log Z for every draw, and the
  # gradient w.r.t. m estimates -d log Z / dm = -(x - m) / 2.
  with jax.enable_x64(True):
    m = 0.5
    g = jax.grad(lambda mm: loss_at(name, mm, posterior_params(m), 16384))(m)
    np.testing.assert_allclose(float(g), -(X - m) / 2, rtol=0.02)


def test_grad_of_fit_final_loss_matches_finite_differences():

  def final_loss(m):
    s = vi.surrogates.mean_field_normal(())  # float64 params under x64
    r = vi.fit(joint(m), s, optax.sgd(0.05), 30,
               key=jax.random.key(0), sample_size=4)
    assert r.trace.dtype == jnp.float64
    return r.trace[-1]

  with jax.enable_x64(True):
    f = jax.jit(final_loss)
    m, eps = 0.5, 1e-5
    fd = (f(m + eps) - f(m - eps)) / (2 * eps)
    np.testing.assert_allclose(float(jax.grad(final_loss)(m)), float(fd),
                               rtol=1e-3)
