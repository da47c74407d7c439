# %% [markdown]
# # 04 · Inhomogeneous Poisson process with a GP prior, learning the kernel
#
# The last example of `tfp.vi.fit_surrogate_posterior`'s documentation (seed 000):
# counts y at 8 locations X, log_rates ~ GaussianProcess(X), y ~ Poisson(exp(log_rates)).
# The latent log rates get a mean-field surrogate; the observed counts are
# carried inside the surrogate as a point mass (the doc's `VectorDeterministic`
# trick); the kernel's amplitude and length scale (and the observation noise)
# are model parameters learned jointly with q (variational EM). A custom
# `trace_fn` follows the loss, the amplitude and 5 fixed-seed draws of q, as in
# the doc.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

tfd, psd = tfp.distributions, tfp.math.psd_kernels
FAST = os.environ.get("VI_JAX_NOTEBOOK_FAST") == "1"
STEPS = 500 if FAST else 2000

# Toy 1D data, as in the doc.
index_points = np.array([-10., -7.2, -4., -0.1, 0.1, 4., 6.2, 9.]).reshape(
    [-1, 1]).astype(np.float32)
observed_counts = np.array([100, 90, 60, 13, 18, 37, 55, 42]).astype(np.float32)


def gp(model_params):
  kernel = psd.ExponentiatedQuadratic(
      amplitude=jnp.exp(model_params["kernel_log_amplitude"]),
      length_scale=jnp.exp(model_params["kernel_log_lengthscale"]))
  return tfd.GaussianProcess(
      kernel, index_points=index_points,
      observation_noise_variance=jnp.exp(
          model_params["observation_noise_log_scale"])**2)


def model_log_prob(model_params, latent_log_rates, y):
  """Joint log density of one draw; model params come first (vi_jax's convention)."""
  return (gp(model_params).log_prob(latent_log_rates) +
          tfd.Poisson(log_rate=latent_log_rates).log_prob(y).sum())


initial_model_params = {"kernel_log_amplitude": jnp.zeros(()),
                        "kernel_log_lengthscale": jnp.zeros(()),
                        "observation_noise_log_scale": jnp.zeros(())}

# %% [markdown]
# The surrogate: the doc's `JointDistributionCoroutine` of a Normal over the
# log rates (scale initialized at softplus(-4)) and a deterministic y.

# %%
q = vi.surrogates.joint((
    vi.surrogates.mean_field_normal((8,), init_scale=float(jax.nn.softplus(-4.))),
    vi.surrogates.point_mass(observed_counts),
))
sample_key = jax.random.key(42)


def trace_fn(tq):
  draws, _ = q.sample_and_log_prob(tq.params, sample_key, 5)
  return tq.loss, tq.model_params["kernel_log_amplitude"], draws[0]


result = vi.fit(model_log_prob, q,
                optax.adam(optax.exponential_decay(0.1, STEPS, 0.1)), STEPS,
                key=jax.random.key(0), sample_size=8,
                model_params=initial_model_params, trace_fn=trace_fn)
losses, log_amplitude_path, sample_path = result.trace
print({k: float(jnp.exp(v)) for k, v in result.model_params.items()})

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
axes[0].plot(losses); axes[0].set_yscale("symlog"); axes[0].set_title("loss (-ELBO)")
axes[1].plot(jnp.exp(log_amplitude_path)); axes[1].set_title("kernel amplitude")
axes[2].plot(jnp.exp(sample_path[:, :, 0])); axes[2].set_title("rate at x=-10, 5 fixed draws")
plt.show()

draws, _ = q.sample_and_log_prob(result.params, jax.random.key(1), 4000)
rates = jnp.exp(draws[0])
plt.figure(figsize=(8, 4))
plt.plot(index_points[:, 0], observed_counts, "ko", label="observed counts")
plt.errorbar(index_points[:, 0], rates.mean(0),
             yerr=2 * rates.std(0), fmt="s", label="E_q[rate] ± 2 sd")
plt.legend(); plt.xlabel("x"); plt.show()

# %% [markdown]
# ## Check
# Learning the hyperparameters must raise the ELBO over keeping the initial
# ones (the objective variational EM climbs), and the posterior mean rates
# must track the counts.

# %%
fixed = vi.fit(lambda lr, y: model_log_prob(initial_model_params, lr, y), q,
               optax.adam(optax.exponential_decay(0.1, STEPS, 0.1)), STEPS,
               key=jax.random.key(0), sample_size=8)
elbo_learned = -float(losses[-100:].mean())
elbo_fixed = -float(fixed.trace[-100:].mean())
print(f"ELBO with learned hyperparameters {elbo_learned:.2f}, with initial ones {elbo_fixed:.2f}")
assert elbo_learned > elbo_fixed
mean_rates = np.asarray(rates.mean(0))
assert np.all(np.abs(mean_rates - observed_counts) / observed_counts < 0.3)
assert np.corrcoef(mean_rates, observed_counts)[0, 1] > 0.97
print("all checks passed")
