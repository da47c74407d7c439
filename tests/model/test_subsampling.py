"""Minibatch targets: the Taylor control variate against closed forms
(unbiased over a partition of the rows, exact at the anchor and on a
Gaussian location model)."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from vi_jax.model import subsampling
from vi_jax.stochastic.minibatch import Batch


def _logistic(rows, w, b):
  logits = rows["x"] @ w + b
  return jnp.sum(rows["y"] * logits - jax.nn.softplus(logits))


def _logistic_prior(w, b):
  return distrax.Normal(0., 1.).log_prob(w).sum() + distrax.Normal(
      0., 1.).log_prob(b)


def _cv_data(n=40, d=3):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, d)).astype(np.float32)
  y = (rng.uniform(size=n) < 0.5).astype(np.float32)
  return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


def _block(data, i, b):
  return Batch(jax.tree_util.tree_map(lambda v: v[i * b:(i + 1) * b],
                                                data), jnp.float32(40 / b))


def test_taylor_control_variate_is_unbiased_and_exact_at_the_anchor():
  data, b = _cv_data(), 8
  anchor = {"w": jnp.array([0.3, -0.2, 0.1]), "b": jnp.array(0.4)}
  target = subsampling.taylor_control_variate(_logistic_prior, _logistic, data,
                                            anchor)

  def full(z):  # the full-data log density
    return _logistic_prior(**z) + _logistic(data, **z)

  z = {"w": jnp.array([1., 0.5, -1.]), "b": jnp.array(-0.7)}
  # Over a partition of the rows into batches, the scaled batch terms sum to
  # the full-data ones: the mean over the 5 blocks is the full log density.
  mean = np.mean([float(target(_block(data, i, b), **z)) for i in range(5)])
  np.testing.assert_allclose(mean, float(full(z)), rtol=1e-5)
  # At the anchor every batch gives the full value and gradient (no noise),
  # unlike the plain scaled minibatch target (the control).
  plain = subsampling.scaled_log_prob(_logistic_prior, _logistic)
  full_grad = jax.grad(full)(anchor)
  for i in range(5):
    batch = _block(data, i, b)
    np.testing.assert_allclose(float(target(batch, **anchor)),
                               float(full(anchor)), rtol=1e-5)
    grad = jax.grad(lambda a, batch=batch: target(batch, **a))(anchor)
    np.testing.assert_allclose(grad["w"], full_grad["w"], atol=1e-4)
    np.testing.assert_allclose(grad["b"], full_grad["b"], atol=1e-4)
  plain_grad = jax.grad(lambda a: plain(_block(data, 0, b), **a))(anchor)
  assert np.max(np.abs(plain_grad["w"] - full_grad["w"])) > 0.1


def test_taylor_control_variate_is_exact_on_a_gaussian_location_model():
  # l(rows; mu) = sum log N(y_i; mu, 1): the Taylor remainder is
  # -B (mu - a)^2 / 2 whatever the rows, so every batch gives the full log
  # density at every mu.
  y = jnp.asarray(np.random.default_rng(1).normal(2., 1., 40), jnp.float32)
  prior = distrax.Normal(0., 3.).log_prob
  lik = lambda rows, mu: jnp.sum(distrax.Normal(mu, 1.).log_prob(rows))
  target = subsampling.taylor_control_variate(prior, lik, y, jnp.float32(1.5))
  full = lambda mu: prior(mu) + lik(y, mu)
  for i, mu in zip(range(5), (-1., 0., 1.9, 3., 6.)):
    batch = Batch(y[i * 8:(i + 1) * 8], jnp.float32(5.))
    np.testing.assert_allclose(float(target(batch, jnp.float32(mu))),
                               float(full(mu)), rtol=1e-5)
    np.testing.assert_allclose(
        float(jax.grad(lambda m, batch=batch: target(batch, m))(
            jnp.float32(mu))), float(jax.grad(full)(mu)), rtol=1e-4,
        atol=1e-3)
