"""Whitened families: densities against closed forms, recovery of a 1e8-conditioned Gaussian."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

tfb, tfd = tfp.bijectors, tfp.distributions
S = vi.surrogates


def _ill_conditioned(dim=6, condition=1e8):
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  cov = q @ np.diag(np.logspace(0, np.log10(condition), dim)) @ q.T
  return rng.normal(size=dim) * 100., cov, rng


@pytest.mark.parametrize("family", ["mean_field", "full_rank"])
def test_whitened_fit_recovers_a_gaussian_of_condition_number_1e8(family):
  with jax.enable_x64(True):
    mean, cov, rng = _ill_conditioned()
    dim = mean.shape[0]
    prec, true_tril = np.linalg.inv(cov), np.linalg.cholesky(cov)
    target = lambda x: -0.5 * (x - mean) @ prec @ (x - mean)
    # A guess one sd off, with scales off by up to 2x (and, for full-rank,
    # wrong correlations): the fit in u has to correct it.
    d = np.exp(rng.uniform(np.log(.5), np.log(2.), dim))
    mix = np.eye(dim) + (0.3 * np.tril(rng.normal(size=(dim, dim)), -1)
                         if family == "full_rank" else 0.)
    guess_tril = true_tril @ mix @ np.diag(d)
    guess_loc = mean + true_tril @ np.ones(dim)
    make = getattr(S, f"{family}_normal")
    s = vi.whitening.whiten(make, (dim,), loc=guess_loc, scale_tril=guess_tril)
    r = vi.fit(target, s, optax.adam(optax.cosine_decay_schedule(0.05, 2000)),
               2000, key=jax.random.key(0), sample_size=16)
    p = r.params
    u_tril = (np.diag(np.asarray(jax.nn.softplus(p["raw_scale"])))
              if family == "mean_field" else
              np.asarray(S.full_rank_scale_tril(p)))
    fit_mean = guess_loc + guess_tril @ np.asarray(p["loc"])
    fit_cov = guess_tril @ u_tril @ u_tril.T @ guess_tril.T
    # In the true posterior's whitened coordinates: mean within 0.05 sd,
    # covariance within 0.1 of the identity.
    np.testing.assert_allclose(np.linalg.solve(true_tril, fit_mean - mean), 0.,
                               atol=0.05)
    w = np.linalg.solve(true_tril, np.linalg.solve(true_tril, fit_cov).T)
    np.testing.assert_allclose(w, np.eye(dim), atol=0.1)
    # The surrogate's density is that Gaussian's.
    z, log_q = s.sample_and_log_prob(p, jax.random.key(1), 5)
    ref = scipy.stats.multivariate_normal(fit_mean, fit_cov).logpdf(np.asarray(z))
    np.testing.assert_allclose(log_q, ref, rtol=1e-8, atol=1e-6)


def test_untrained_whitened_gaussians_start_at_the_guess_with_bijector():
  loc = jnp.array([0.5, -1., 2.])
  tril = jnp.array([[1., 0., 0.], [0.5, 2., 0.], [-0.3, 0.2, 0.1]])
  ref = tfd.TransformedDistribution(
      tfd.MultivariateNormalTriL(loc, tril), tfb.Softplus())
  for make in (S.mean_field_normal, S.full_rank_normal, S.real_nvp):
    s = vi.whitening.whiten(make, (3,), tfb.Softplus(), loc=loc,
                            scale_tril=tril)
    params = s.init(jax.random.key(0))
    z, log_q = s.sample_and_log_prob(params, jax.random.key(1), 6)
    assert bool(jnp.all(z > 0))
    chex.assert_trees_all_close(log_q, ref.log_prob(z), rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(s.log_prob(params, z), log_q, rtol=1e-4,
                                atol=1e-4)


@pytest.mark.parametrize("make, kwargs", [
    (S.low_rank_normal, {"rank": 2}),
    (S.mixture, {"num_components": 2}),
    (S.neural_spline_flow, {"hidden_sizes": (4,), "num_layers": 2}),
])
def test_every_family_on_pytree_latents_has_a_consistent_density(make, kwargs):
  event_shape = {"mu": (), "sigma": (), "w": (2,)}
  bijector = {"mu": None, "sigma": tfb.Softplus(), "w": None}
  tril = jnp.diag(jnp.array([0.5, 2., 1., 3.]))
  s = vi.whitening.whiten(make, event_shape, bijector, loc=jnp.arange(4.),
                          scale_tril=tril, **kwargs)
  params = s.init(jax.random.key(0))
  z, log_q = jax.jit(s.sample_and_log_prob, static_argnums=2)(
      params, jax.random.key(1), 5)
  chex.assert_shape([z["mu"], z["sigma"], z["w"], log_q],
                    [(5,), (5,), (5, 2), (5,)])
  assert bool(jnp.all(z["sigma"] > 0))
  chex.assert_trees_all_close(s.log_prob(params, z), log_q, rtol=1e-4,
                              atol=1e-4)


def test_bad_input_errors_name_the_argument():
  with pytest.raises(ValueError, match="loc"):
    vi.whitening.whiten(S.mean_field_normal, (3,), loc=jnp.zeros(2),
                        scale_tril=jnp.eye(3))
  with pytest.raises(ValueError, match="scale_tril"):
    vi.whitening.whiten(S.mean_field_normal, (3,), loc=jnp.zeros(3),
                        scale_tril=jnp.ones((3, 3)))
  with pytest.raises(TypeError, match="make_surrogate"):
    vi.whitening.whiten("mean_field", (3,), loc=jnp.zeros(3),
                        scale_tril=jnp.eye(3))
