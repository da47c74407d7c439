# %% [markdown]
# # 07 · Edward's KLqp and Bean Machine's VariationalInfer, in vi_jax
#
# Seeds 003 (Edward `ed.KLqp`) and 004 (Bean Machine VI):
# score-function vs reparameterization gradients, the analytic-KL form with
# `kl_scaling`, variational EM of model parameters, ADVI vs MAP autoguides,
# choosing the f-divergence, and a step-by-step loop with a callback
# (`VariationalInfer.step()` / Edward's `update()`).

# %%
import os

import distrax
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

tfd = tfp.distributions
FAST = os.environ.get("VI_JAX_NOTEBOOK_FAST") == "1"
STEPS = 800 if FAST else 3000


def normal_normal(z):  # seed 000's model again: posterior N(2.5, 0.707)
  return distrax.Normal(0., 1.).log_prob(z) + distrax.Normal(z, 1.).log_prob(5.)


q = vi.surrogates.mean_field_normal((), init_scale=1.)
decay = optax.adam(optax.exponential_decay(0.05, STEPS, 0.05))

# %% [markdown]
# ## KLqp: score-function vs reparameterization gradients
# Both estimate the same gradient; the score function (Paisley et al. 2012,
# with a leave-one-out baseline) needs no differentiable sampling path but has
# more variance. We measure the gradient variance at the initial params.

# %%
estimators = {"reparameterization": "reparameterization",
              "score_function": "score_function"}
fits, grad_sd = {}, {}
params0 = q.init(jax.random.key(0))
for name, est in estimators.items():
  loss = vi.losses.negative_elbo(gradient_estimator=est)
  r = vi.fit(normal_normal, q, decay, STEPS, key=jax.random.key(1),
             sample_size=16, loss=loss)
  fits[name] = (float(r.params["loc"][0]),
                float(jax.nn.softplus(r.params["raw_scale"][0])))
  grads = jax.vmap(lambda k: jax.grad(lambda p: loss(
      normal_normal, q, p, k, 16))(params0)["loc"][0])(
          jax.random.split(jax.random.key(2), 500))
  grad_sd[name] = float(grads.std())
  print(f"{name:>20}: q = N({fits[name][0]:.3f}, {fits[name][1]:.3f}); "
        f"sd of d loss / d loc at init = {grad_sd[name]:.3f}")

# %% [markdown]
# ## Analytic KL and `kl_scaling`
# With a Normal prior and a Normal q, the KL term is in closed form
# (`-E_q[log p(x|z)] + beta * KL(q || p(z))`). `kl_scaling = beta` down- or
# up-weights it (Edward's `kl_scaling`, beta-VAE); beta = 1 is the posterior.

# %%
prior = distrax.Normal(0., 1.)
log_lik = lambda z: distrax.Normal(z, 1.).log_prob(5.)
beta_fits = {}
for beta in (0.5, 1., 2.):
  r = vi.fit(normal_normal, q, decay, STEPS, key=jax.random.key(3), sample_size=16,
             loss=vi.losses.analytic_kl_elbo(prior, log_lik, kl_scaling=beta))
  beta_fits[beta] = (float(r.params["loc"][0]),
                     float(jax.nn.softplus(r.params["raw_scale"][0])))
  # Closed form of the beta-weighted optimum: mean 5 / (beta + 1), sd sqrt(beta / (beta + 1)).
  print(f"beta={beta}: q = N({beta_fits[beta][0]:.3f}, {beta_fits[beta][1]:.3f});"
        f" exact N({5 / (beta + 1):.3f}, {np.sqrt(beta / (beta + 1)):.3f})")

# %% [markdown]
# ## Variational EM (KLqp also optimizes model parameters)
# Eight groups, y_i ~ N(theta_i, 1), theta_i ~ N(mu, 1) with mu a model
# parameter: maximizing the marginal likelihood gives mu = mean(y); q(theta)
# is then the exact posterior N((y_i + mu) / 2, 1/sqrt 2).

# %%
y = jnp.array([2.8, 0.8, -0.3, 0.7, -0.1, 0.1, 1.8, 1.2])


def hierarchical(model_params, theta):
  return (distrax.Normal(model_params["mu"], 1.).log_prob(theta).sum() +
          distrax.Normal(theta, 1.).log_prob(y).sum())


r_em = vi.fit(hierarchical, vi.surrogates.mean_field_normal((8,)), decay, STEPS,
              key=jax.random.key(4), sample_size=16,
              model_params={"mu": jnp.zeros(())},
              trace_fn=lambda tq: tq.model_params["mu"])
mu_hat = float(r_em.model_params["mu"])
print(f"learned mu = {mu_hat:.3f}; marginal-likelihood optimum mean(y) = {float(y.mean()):.3f}")
plt.plot(r_em.trace); plt.axhline(float(y.mean()), ls="--", c="k")
plt.title("mu during variational EM"); plt.show()

# %% [markdown]
# ## Bean Machine's autoguides: ADVI vs MAP
# A model described by its priors (a positive scale, a probability, a simplex)
# and a likelihood. `vi.surrogates.from_prior` builds the mean-field Gaussian
# (ADVI) or the point mass (MAP) guide with each latent's support bijector
# chosen from its prior.

# %%
counts = jnp.array([12., 30., 58.])
flips = jnp.array([1., 1., 0., 1., 1., 1., 0., 1., 1., 1.])
priors = {"p": tfd.Beta(2., 2.), "weights": tfd.Dirichlet(jnp.ones(3)),
          "rate": tfd.Gamma(2., 0.1)}


def model(p, weights, rate):
  return (priors["p"].log_prob(p) + priors["weights"].log_prob(weights) +
          priors["rate"].log_prob(rate) +
          tfd.Bernoulli(probs=p).log_prob(flips).sum() +
          tfd.Multinomial(100., probs=weights).log_prob(counts) +
          tfd.Poisson(rate).log_prob(counts).sum())


guides = {"ADVI (mean field)": vi.surrogates.from_prior(priors, "mean_field"),
          "MAP (delta)": vi.surrogates.from_prior(priors, "delta")}
# The Poisson rate must travel from softplus(0) = 0.7 to about 33 in the
# unconstrained space: a larger, decaying learning rate.
AUTO_STEPS = 3000  # cheap model: the full number of steps even in the reduced mode
fast_decay = optax.adam(optax.exponential_decay(0.3, AUTO_STEPS, 0.01))
estimates = {}
for name, guide in guides.items():
  r = vi.fit(model, guide, fast_decay, AUTO_STEPS, key=jax.random.key(5), sample_size=16)
  z, _ = guide.sample_and_log_prob(r.params, jax.random.key(6), 4000)
  estimates[name] = jax.tree_util.tree_map(lambda v: np.asarray(v.mean(0)), z)
  print(name, {k: np.round(v, 3) for k, v in estimates[name].items()})
# Conjugate answers: Beta(2+8, 2+2), Dirichlet(1 + counts), Gamma(2 + sum, 0.1 + 3).
exact_mean = {"p": 10 / 14, "weights": np.asarray((1 + counts) / (3 + counts.sum())),
              "rate": float((2 + counts.sum()) / 3.1)}
exact_mode = {"p": 9 / 12, "weights": np.asarray(counts / counts.sum()),
              "rate": float((1 + counts.sum()) / 3.1)}
print("exact posterior means", exact_mean, "\nexact posterior modes", exact_mode)

# %% [markdown]
# ## Choosing the divergence (Bean Machine's gradient estimators over f-divergences)

# %%
choices = {"reverse KL (ELBO)": vi.losses.negative_elbo(),
           "forward KL": vi.losses.forward_kl(),
           "Jensen-Shannon": vi.losses.monte_carlo_variational_loss(
               lambda u: vi.csiszar.jensen_shannon(u, self_normalized=True)),
           "Renyi alpha=0.5": vi.losses.renyi(0.5, 8)}
div_fits = {}
for name, loss in choices.items():
  r = vi.fit(normal_normal, q, decay, STEPS, key=jax.random.key(7), sample_size=64,
             loss=loss)
  div_fits[name] = (float(r.params["loc"][0]),
                    float(jax.nn.softplus(r.params["raw_scale"][0])))
  print(f"{name:>18}: N({div_fits[name][0]:.3f}, {div_fits[name][1]:.3f})")

# %% [markdown]
# ## Step by step, with a callback
# `vi.build` gives the pure `init` / `step` pair that `vi.fit` scans; stepping
# from Python (each step jit-compiled once) allows callbacks, logging,
# TensorBoard, early exits.

# %%
alg = vi.build(normal_normal, q, decay, sample_size=16)
state = alg.init(jax.random.key(8))
step = jax.jit(alg.step)
log = []


def callback(info):
  if int(info.step) % 200 == 0:
    log.append((int(info.step), float(info.loss)))
    print(f"step {int(info.step):5d}  loss {float(info.loss):.4f}")


for key in jax.random.split(jax.random.key(9), STEPS):
  state, info = step(state, key)
  callback(info)
stepped = (float(state.params["loc"][0]), float(jax.nn.softplus(state.params["raw_scale"][0])))

# %% [markdown]
# ## Check

# %%
for name, (m, s) in fits.items():
  assert abs(m - 2.5) < 0.15 and abs(s / 0.7071 - 1) < 0.2, (name, m, s)
assert grad_sd["score_function"] > grad_sd["reparameterization"]
for beta, (m, s) in beta_fits.items():
  assert abs(m - 5 / (beta + 1)) < 0.1 and abs(s / np.sqrt(beta / (beta + 1)) - 1) < 0.1, beta
assert abs(mu_hat - float(y.mean())) < 0.15
advi, map_ = estimates["ADVI (mean field)"], estimates["MAP (delta)"]
assert abs(advi["p"] - exact_mean["p"]) < 0.05 and abs(map_["p"] - exact_mode["p"]) < 0.05
assert np.allclose(advi["weights"], exact_mean["weights"], atol=0.03)
assert np.allclose(map_["weights"], exact_mode["weights"], atol=0.03)
assert abs(advi["rate"] / exact_mean["rate"] - 1) < 0.05
assert abs(map_["rate"] / exact_mode["rate"] - 1) < 0.05
for name, (m, s) in div_fits.items():
  assert abs(m - 2.5) < 0.2 and abs(s / 0.7071 - 1) < 0.25, (name, m, s)
assert len(log) == -(-STEPS // 200) and abs(stepped[0] - 2.5) < 0.1
print("all checks passed")
