# %% [markdown]
# # 05 · Bayesian neural network regression
#
# The tutorial's BNN (seed 001): one hidden layer of 20 ReLU units, N(0, 1)
# priors on every weight, a Gaussian likelihood, fitted by VI with the KL term
# in closed form (Bayes by backprop; `vi.losses.analytic_kl_elbo`). Then the
# same network on a real dataset shipped with scikit-learn (diabetes), fitted
# by minibatch SVI, with predictive means and 95% bands.

# %%
import os

import distrax
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split

import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

tfd = tfp.distributions

FAST = os.environ.get("VI_JAX_NOTEBOOK_FAST") == "1"
STEPS = 1500 if FAST else 6000
HIDDEN = 20


def unpack(w, d_in):
  """Flat weight vector [D] -> (W1 [d_in, H], b1 [H], W2 [H], b2 [])."""
  i = 0
  w1 = w[i:i + d_in * HIDDEN].reshape(d_in, HIDDEN); i += d_in * HIDDEN
  b1 = w[i:i + HIDDEN]; i += HIDDEN
  w2 = w[i:i + HIDDEN]; i += HIDDEN
  return w1, b1, w2, w[i]


def num_weights(d_in):
  return d_in * HIDDEN + 2 * HIDDEN + 1


def forward(w, x):
  w1, b1, w2, b2 = unpack(w, x.shape[-1])
  return jax.nn.relu(x @ w1 + b1) @ w2 + b2

# %% [markdown]
# ## Synthetic data, as in the tutorial

# %%
rng = np.random.default_rng(42)
N = 100
X = np.linspace(-3, 3, N).reshape(-1, 1).astype(np.float32)
y = (np.sin(X) + 0.3 * rng.standard_normal((N, 1))).astype(np.float32)[:, 0]
NOISE = 0.3
D = num_weights(1)
prior = distrax.MultivariateNormalDiag(jnp.zeros(D), jnp.ones(D))


def log_likelihood(w):
  return distrax.Normal(forward(w, X), NOISE).log_prob(y).sum()


surrogate = vi.surrogates.mean_field_normal((D,), init_loc_radius=0.5,
                                            init_scale=0.05)
result = vi.fit(lambda w: prior.log_prob(w) + log_likelihood(w), surrogate,
                optax.adam(optax.cosine_decay_schedule(0.01, STEPS, 0.1)), STEPS,
                key=jax.random.key(0), sample_size=8,
                loss=vi.losses.analytic_kl_elbo(prior, log_likelihood))


def predictive(params, x, key, n=200, noise=NOISE):
  w, _ = surrogate.sample_and_log_prob(params, key, n)
  f = jax.vmap(lambda wi: forward(wi, x))(w)
  return f.mean(0), jnp.sqrt(f.var(0) + noise**2)


X_test = np.linspace(-5, 5, 200).reshape(-1, 1).astype(np.float32)
mean_test, sd_test = predictive(result.params, X_test, jax.random.key(1))
plt.figure(figsize=(9, 4))
plt.scatter(X[:, 0], y, s=10, alpha=0.7, label="data")
plt.plot(X_test[:, 0], np.sin(X_test[:, 0]), "k--", label="sin(x)")
plt.plot(X_test[:, 0], mean_test, label="predictive mean")
plt.fill_between(X_test[:, 0], mean_test - 1.96 * sd_test, mean_test + 1.96 * sd_test,
                 alpha=0.3, label="95% band")
plt.legend(); plt.title("BNN on the tutorial's sin data (analytic-KL ELBO)"); plt.show()

mean_train, sd_train = predictive(result.params, X, jax.random.key(2))
rmse_sin = float(jnp.sqrt(jnp.mean((mean_train - np.sin(X[:, 0]))**2)))
coverage_sin = float(jnp.mean(jnp.abs(y - mean_train) < 1.96 * sd_train))
print(f"RMSE of predictive mean vs sin(x): {rmse_sin:.3f}; 95% band coverage {coverage_sin:.2f}")

# %% [markdown]
# ## A real dataset: diabetes (scikit-learn), minibatch SVI
# 442 patients, 10 standardized features, target standardized. The
# observation noise is a latent too (positive, softplus bijector). Each step
# uses 64 rows and scales the likelihood by N/64 (`vi.fit(data=..., batch_size=...)`).

# %%
Xd, yd = load_diabetes(return_X_y=True)
Xd = ((Xd - Xd.mean(0)) / Xd.std(0)).astype(np.float32)
yd = ((yd - yd.mean()) / yd.std()).astype(np.float32)
X_tr, X_te, y_tr, y_te = train_test_split(Xd, yd, test_size=0.25, random_state=0)
Dd = num_weights(Xd.shape[1])
weight_prior = distrax.Normal(0., 1.)


def log_prior(w, sigma):
  return weight_prior.log_prob(w).sum() + tfd.HalfNormal(1.).log_prob(sigma)


def log_lik_rows(rows, w, sigma):
  x, t = rows
  return distrax.Normal(forward(w, x), sigma).log_prob(t).sum()


bnn = vi.surrogates.mean_field_normal({"w": (Dd,), "sigma": ()},
                                      {"w": None, "sigma": vi.bijectors.positive()},
                                      init_loc_radius=0.3, init_scale=0.05)
result_d = vi.fit(vi.minibatch.scaled_log_prob(log_prior, log_lik_rows), bnn,
                  optax.adam(optax.cosine_decay_schedule(0.01, STEPS, 0.1)), STEPS,
                  key=jax.random.key(3), sample_size=8,
                  data=(X_tr, y_tr), batch_size=64)

draws, _ = bnn.sample_and_log_prob(result_d.params, jax.random.key(4), 300)
f_te = jax.vmap(lambda w: forward(w, X_te))(draws["w"])
pred_mean = f_te.mean(0)
pred_sd = jnp.sqrt(f_te.var(0) + jnp.mean(draws["sigma"]**2))
rmse_bnn = float(jnp.sqrt(jnp.mean((pred_mean - y_te)**2)))
rmse_lin = float(np.sqrt(np.mean((LinearRegression().fit(X_tr, y_tr).predict(X_te) - y_te)**2)))
coverage_d = float(jnp.mean(jnp.abs(y_te - pred_mean) < 1.96 * pred_sd))
print(f"test RMSE: BNN {rmse_bnn:.3f}, linear regression {rmse_lin:.3f}; "
      f"95% interval coverage {coverage_d:.2f}; E_q[sigma] = {float(draws['sigma'].mean()):.3f}")

order = np.argsort(np.asarray(pred_mean))
plt.figure(figsize=(9, 4))
plt.errorbar(np.arange(len(order)), np.asarray(pred_mean)[order],
             yerr=1.96 * np.asarray(pred_sd)[order], fmt=".", alpha=0.4,
             label="predictive mean ± 95%")
plt.plot(np.arange(len(order)), y_te[order], "k.", label="held-out target")
plt.xlabel("test patients (sorted by prediction)"); plt.legend(); plt.show()
plt.plot(result_d.trace); plt.yscale("symlog"); plt.title("minibatch loss"); plt.show()

# %% [markdown]
# ## Check

# %%
assert rmse_sin < 0.2, rmse_sin
assert 0.8 < coverage_sin <= 1.0
assert rmse_bnn < 1.15 * rmse_lin, (rmse_bnn, rmse_lin)
assert 0.8 < coverage_d <= 1.0, coverage_d
print("all checks passed")
