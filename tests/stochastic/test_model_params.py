"""Model-parameter learning (variational EM): closed form and seed 000's GP."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

tfd, psd = tfp.distributions, tfp.math.psd_kernels


def test_empirical_bayes_prior_mean_closed_form():
  # z ~ N(mu, 1), x | z ~ N(z, 1), x = 5: the marginal N(x; mu, sqrt 2) is
  # maximized at mu = 5, where the posterior is N(5, 1/sqrt 2). Dict latents:
  # called as f(model_params, **z).
  def target(mp, z):
    return (distrax.Normal(mp["mu"], 1.).log_prob(z) +
            distrax.Normal(z, 1.).log_prob(5.))

  s = vi.surrogates.mean_field_normal({"z": ()})

  @jax.jit
  @jax.vmap  # two independent EM fits in one compile
  def run(key):
    return vi.fit(target, s,
                  optax.adam(optax.exponential_decay(0.1, 3000, 0.02)), 3000,
                  key=key, sample_size=16, model_params={"mu": jnp.zeros(())},
                  trace_fn=lambda tq: (tq.loss, tq.model_params["mu"]))

  r = run(jax.random.split(jax.random.key(0), 2))
  np.testing.assert_allclose(np.asarray(r.model_params["mu"]), 5., atol=0.1)
  np.testing.assert_allclose(np.asarray(r.params["loc"][:, 0]), 5., atol=0.1)
  np.testing.assert_allclose(
      np.asarray(jax.nn.softplus(r.params["raw_scale"][:, 0])),
      1 / np.sqrt(2), rtol=0.05)
  np.testing.assert_array_equal(np.asarray(r.trace[1][:, 0]), 0.)
  assert r.state.model_params["mu"].shape == (2,)


# Seed 000: tfp.vi.fit_surrogate_posterior's inhomogeneous Poisson process.
X = np.array([-10., -7.2, -4., -0.1, 0.1, 4., 6.2, 9.], np.float32).reshape(
    [-1, 1])
COUNTS = np.array([100, 90, 60, 13, 18, 37, 55, 42], np.float32)


def gp_poisson(mp, log_rates):
  kernel = psd.ExponentiatedQuadratic(
      amplitude=jnp.exp(mp["kernel_log_amplitude"]),
      length_scale=jnp.exp(mp["kernel_log_lengthscale"]))
  gp = tfd.GaussianProcess(
      kernel, index_points=X,
      observation_noise_variance=jnp.exp(mp["observation_noise_log_scale"])**2)
  return (gp.log_prob(log_rates) +
          tfd.Poisson(log_rate=log_rates).log_prob(COUNTS).sum())


def _laplace_log_marginal(mp):
  """Laplace approximation of log p(counts | mp), by Newton's method (float64).

  Independent of vi_jax: the mode of log N(f; 0, K + s^2 I) + log Poisson(y | e^f)
  and the Hessian there.
  """
  amp = np.exp(float(mp["kernel_log_amplitude"]))
  ls = np.exp(float(mp["kernel_log_lengthscale"]))
  noise = np.exp(float(mp["observation_noise_log_scale"]))
  x = X[:, 0].astype(np.float64)
  k = amp**2 * np.exp(-0.5 * (x[:, None] - x[None, :])**2 / ls**2)
  k = k + noise**2 * np.eye(len(x))
  k_inv = np.linalg.inv(k)
  y = COUNTS.astype(np.float64)
  f = np.log(y)
  for _ in range(100):
    grad = -k_inv @ f + y - np.exp(f)
    hess = k_inv + np.diag(np.exp(f))
    f = f + np.linalg.solve(hess, grad)
  from scipy.special import gammaln  # pylint: disable=g-import-not-at-top
  log_joint = (-0.5 * f @ k_inv @ f - 0.5 * np.linalg.slogdet(k)[1] -
               0.5 * len(x) * np.log(2 * np.pi) +
               np.sum(y * f - np.exp(f) - gammaln(y + 1)))
  hess = k_inv + np.diag(np.exp(f))
  return log_joint + 0.5 * len(x) * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(
      hess)[1]


def test_gp_poisson_learns_kernel_hyperparameters():
  mp0 = {"kernel_log_amplitude": jnp.zeros(()),
         "kernel_log_lengthscale": jnp.zeros(()),
         "observation_noise_log_scale": jnp.zeros(())}
  s = vi.surrogates.mean_field_normal((8,))
  learned = vi.fit(gp_poisson, s,
                   optax.adam(optax.exponential_decay(0.1, 1500, 0.1)), 1500,
                   key=jax.random.key(0), sample_size=8, model_params=mp0)
  assert set(learned.model_params) == set(mp0)
  # The learned hyperparameters raise the marginal likelihood, the objective
  # variational EM climbs (Laplace approximation, computed independently).
  before = _laplace_log_marginal(mp0)
  after = _laplace_log_marginal(learned.model_params)
  assert after > before + 10., (before, after)
  # The variational bound at the end is below (and near) that marginal.
  final_elbo = -float(learned.trace[-200:].mean())
  assert final_elbo < after + 0.5 and final_elbo > after - 5.
  # Posterior mean rates E_q[exp(log_rates)] track the counts.
  z, _ = s.sample_and_log_prob(learned.params, jax.random.key(1), 4000)
  rates = np.asarray(jnp.exp(z).mean(0))
  assert np.all(np.abs(rates - COUNTS) / COUNTS < 0.25)
  assert np.corrcoef(rates, COUNTS)[0, 1] > 0.98
