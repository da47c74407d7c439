"""The compiled target kernel against closed forms: a Gaussian under a
log-transformed latent (value, gradient, Hessian), any number of rows."""

import numpy as np

import vi_jax as vi
from vi_jax.model import bijectors
from vi_jax.model.compiled_density import BATCH, compiled_density

PRECISION = np.array([[2., 0.5], [0.5, 1.]])


def _target(x, s):
  # N(0, PRECISION^-1) on x, Exponential(1) on s > 0.
  return -0.5 * x @ PRECISION @ x - s


SPACE = bijectors.latent_space({"x": (2,), "s": ()},
                               {"x": None, "s": vi.bijectors.positive()})


def _closed_form(u):
  """Log density and gradient in the unconstrained coordinates: flattening
  order is the dict's (s, then x); s = softplus(t), ldj = log sigmoid(t)."""
  t, x = u[:, 0], u[:, 1:]
  s = np.logaddexp(0., t)
  sig = 1. / (1. + np.exp(-t))
  value = -0.5 * np.einsum("ni,ij,nj->n", x, PRECISION, x) - s + np.log(sig)
  grad = np.concatenate([(-sig + (1. - sig))[:, None], -x @ PRECISION], 1)
  return value, grad


def test_values_and_gradients_match_the_closed_form_for_any_row_count():
  density = compiled_density(_target, SPACE)
  u = np.random.default_rng(0).normal(size=(2 * BATCH + 5, 3))
  z, _ = SPACE.forward_and_log_det(u)
  assert np.allclose(np.asarray(z["s"]), np.logaddexp(0., u[:, 0]), rtol=1e-5)
  value, grad = density.value_and_grad(u)
  ref_value, ref_grad = _closed_form(u)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(density.value(u), ref_value, rtol=1e-5,
                             atol=1e-5)
  one_value, one_grad = density.value_and_grad_one(u[3])
  np.testing.assert_allclose(one_value, ref_value[3], rtol=1e-5)
  np.testing.assert_allclose(one_grad, ref_grad[3], rtol=1e-4, atol=1e-5)


def test_the_hessian_is_the_closed_form_and_the_density_is_cached():
  density = compiled_density(_target, SPACE)
  assert compiled_density(_target, SPACE) is density
  hess = density.hessian(np.zeros(3))
  # At t = 0: d2/dt2 [-softplus(t) + log sigmoid(t)] = -2 sigmoid'(0) = -0.5.
  np.testing.assert_allclose(hess[0, 0], -0.5, atol=1e-5)
  np.testing.assert_allclose(hess[1:, 1:], -PRECISION, atol=1e-5)
  np.testing.assert_allclose(hess[0, 1:], 0., atol=1e-6)
