# %% [markdown]
# # 03 · Understanding KL divergence, with vi_jax
#
# The walkthrough of seed 002 ("Understanding KL-Divergence"), in JAX:
# analytic KL between Normals and MVNs, Monte Carlo KL across families,
# optimizing q toward p in 1-D and 2-D (diagonal vs full covariance, with an
# animation saved as a GIF), and Bayesian linear regression with a factored
# surrogate.

# %%
import os

import distrax
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from matplotlib import animation
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

tfd = tfp.distributions
FAST = os.environ.get("VI_JAX_NOTEBOOK_FAST") == "1"
STEPS = 300 if FAST else 1500

# %% [markdown]
# ## G1: KL between two Normals, in closed form
# p = N(1, 4); q1 = N(0, 2), q2 = N(1, 3). The seed prints 0.35 and 0.07.

# %%
p = distrax.Normal(1., 4.)
kl_q1 = vi.kl_divergence(distrax.Normal(0., 2.), p)
kl_q2 = vi.kl_divergence(distrax.Normal(1., 3.), p)
print(f"D_KL(q(0, 2) || p) = {kl_q1:0.2f}")
print(f"D_KL(q(1, 3) || p) = {kl_q2:0.2f}")
z_values = jnp.linspace(-5., 15., 200)
plt.plot(z_values, jnp.exp(p.log_prob(z_values)), lw=3, label="p = N(1, 4)")
plt.plot(z_values, jnp.exp(distrax.Normal(0., 2.).log_prob(z_values)), "--",
         label=f"q1 = N(0, 2), KL = {kl_q1:.2f}")
plt.plot(z_values, jnp.exp(distrax.Normal(1., 3.).log_prob(z_values)), "-.",
         label=f"q2 = N(1, 3), KL = {kl_q2:.2f}")
plt.xlabel("x"); plt.ylabel("PDF"); plt.legend(); plt.show()

# %% [markdown]
# The same for multivariate normals (closed form, distrax registers it):

# %%
p_2d = distrax.MultivariateNormalFullCovariance(
    jnp.array([0., 0.]), jnp.array([[1., 0.5], [0.5, 2.]]))
q_2d = distrax.MultivariateNormalDiag(jnp.array([2., -2.]), jnp.array([1., 2.]))
print(f"D_KL(q_2d || p_2d) = {vi.kl_divergence(q_2d, p_2d):0.4f}")

# %% [markdown]
# ## G3: KL between different families, by Monte Carlo
# No closed form is registered for Normal vs a Gaussian mixture; the seed
# estimates it by sampling (it prints about 9.47 and 46.5).

# %%
p_s = distrax.MixtureSameFamily(
    mixture_distribution=distrax.Categorical(probs=jnp.array([0.5, 0.5])),
    components_distribution=distrax.Normal(jnp.array([-0.2, 1.]),
                                           jnp.array([0.1, 0.5])))
q_1, q_2 = distrax.Normal(3., 1.), distrax.Normal(3., 4.5)
mc_1 = vi.monte_carlo_kl(q_1, p_s, key=jax.random.key(0), sample_size=100_000)
mc_2 = vi.monte_carlo_kl(q_2, p_s, key=jax.random.key(1), sample_size=100_000)
print(f"KL(q1 || mixture) ~ {mc_1:.2f},  KL(q2 || mixture) ~ {mc_2:.2f}")

# %% [markdown]
# ## G2 / G4: optimizing q toward p
# Minimizing KL[q || p] is `vi.fit` with `target_log_prob_fn = p.log_prob`
# (the ELBO's log Z is 0 for a normalized p, so the loss *is* the KL). We trace
# the params every step to animate the fit.

# %%
def fit_and_trace(target_log_prob_fn, surrogate, steps, lr, key, init_loc=None):
  return vi.fit(target_log_prob_fn, surrogate, optax.adam(lr), steps, key=key,
                sample_size=16,
                trace_fn=lambda tq: (tq.loss, tq.params))


surrogate_1d = vi.surrogates.mean_field_normal((), init_loc=5., init_scale=0.5)
res_1d = fit_and_trace(p.log_prob, surrogate_1d, STEPS, 0.05, jax.random.key(2))
loss_1d, path_1d = res_1d.trace
loc_1d = float(res_1d.params["loc"][0])
scale_1d = float(jax.nn.softplus(res_1d.params["raw_scale"][0]))
print(f"fitted q = N({loc_1d:.2f}, {scale_1d:.2f}); p = N(1, 4)")

fig, ax = plt.subplots(figsize=(8, 4))
frames = np.linspace(0, STEPS - 1, 40).astype(int)


def animate(i):
  ax.clear()
  k = frames[i]
  loc = float(path_1d["loc"][k, 0])
  scale = float(jax.nn.softplus(path_1d["raw_scale"][k, 0]))
  ax.plot(z_values, jnp.exp(p.log_prob(z_values)), lw=4, label="p = N(1, 4)")
  ax.plot(z_values, jnp.exp(distrax.Normal(loc, scale).log_prob(z_values)),
          label=f"q = N({loc:.2f}, {scale:.2f})")
  ax.set_title(f"step {k}, KL(q||p) ~ {float(loss_1d[k]):.2f}")
  ax.set_ylim(0, 0.9); ax.legend(loc="upper right")


ani = animation.FuncAnimation(fig, animate, frames=len(frames))
ani.save("kl_qp.gif", writer=animation.PillowWriter(fps=10), dpi=60)
plt.close(fig)
print("saved kl_qp.gif", os.path.getsize("kl_qp.gif"), "bytes")

# %% [markdown]
# ![KL animation](kl_qp.gif)
#
# In 2-D, the diagonal (mean-field) family cannot express the correlation of p,
# so its KL stays above zero (the seed ends at about 0.067); the full-rank family
# reaches it.

# %%
def kl_of(surrogate_kind, params):
  if surrogate_kind == "diag":
    q = distrax.MultivariateNormalDiag(params["loc"],
                                       jax.nn.softplus(params["raw_scale"]))
  else:
    tril = vi.surrogates.full_rank_scale_tril(params)
    q = distrax.MultivariateNormalTri(params["loc"], tril)
  return float(vi.kl_divergence(q, p_2d)), q


init = jnp.array([2., -2.])
fits_2d = {}
for kind, make in (("diag", vi.surrogates.mean_field_normal),
                   ("full", vi.surrogates.full_rank_normal)):
  s = make((2,), init_loc=init, init_scale=1.)
  r = vi.fit(p_2d.log_prob, s, optax.adam(optax.exponential_decay(0.05, STEPS, 0.1)),
             STEPS, key=jax.random.key(3), sample_size=32)
  fits_2d[kind] = kl_of(kind, r.params)
  print(f"{kind:>4}: KL(q || p_2d) = {fits_2d[kind][0]:.4f}")

xx, yy = np.meshgrid(np.linspace(-3, 3, 80), np.linspace(-4, 4, 80))
grid = jnp.stack([xx, yy], -1)
fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
for ax, (kind, (kl, q)) in zip(axes, fits_2d.items()):
  ax.contourf(xx, yy, jnp.exp(p_2d.log_prob(grid)), cmap="plasma", alpha=0.3)
  ax.contour(xx, yy, jnp.exp(q.log_prob(grid)), cmap="viridis")
  ax.set_title(f"{kind} q, KL = {kl:.3f}"); ax.set_aspect("equal")
plt.show()

# %% [markdown]
# ## Bayesian linear regression with a factored surrogate
# y = theta_0 + theta_1 x + noise (known noise sd 1), theta ~ N(0, I). The
# posterior is Gaussian in closed form; a surrogate factored over named latents
# (`{"intercept": (), "slope": ()}`, each its own Normal) recovers its means and
# (under-estimates only the correlation part of) its spread.

# %%
key_x, key_n = jax.random.split(jax.random.key(4))
x = jax.random.uniform(key_x, (50,), minval=-2., maxval=2.)
y = 1. + 2. * x + jax.random.normal(key_n, (50,))


def regression_log_prob(intercept, slope):
  prior = distrax.Normal(0., 1.).log_prob(intercept) + distrax.Normal(0., 1.).log_prob(slope)
  return prior + distrax.Normal(intercept + slope * x, 1.).log_prob(y).sum()


design = jnp.stack([jnp.ones_like(x), x], 1)
post_cov = jnp.linalg.inv(jnp.eye(2) + design.T @ design)
post_mean = post_cov @ design.T @ y
factored = vi.surrogates.mean_field_normal({"intercept": (), "slope": ()})
r_lr = vi.fit(lambda intercept, slope: regression_log_prob(intercept, slope),
              factored, optax.adam(optax.exponential_decay(0.05, STEPS, 0.1)),
              STEPS, key=jax.random.key(5), sample_size=16)
draws, _ = factored.sample_and_log_prob(r_lr.params, jax.random.key(6), 20_000)
vi_mean = jnp.array([draws["intercept"].mean(), draws["slope"].mean()])
print("exact posterior mean", post_mean, " VI mean", vi_mean)
print("exact posterior sd  ", jnp.sqrt(jnp.diag(post_cov)),
      " VI sd", jnp.array([draws["intercept"].std(), draws["slope"].std()]))

# %% [markdown]
# ## Check

# %%
assert abs(float(kl_q1) - 0.35) < 0.005 and abs(float(kl_q2) - 0.07) < 0.005
assert abs(float(mc_1) - 9.47) < 0.3 and abs(float(mc_2) - 46.5) < 1.5
assert abs(loc_1d - 1.) < (0.6 if FAST else 0.3) and abs(scale_1d - 4.) < (1.5 if FAST else 0.4)
assert fits_2d["full"][0] < fits_2d["diag"][0]
assert abs(fits_2d["diag"][0] - 0.067) < (0.1 if FAST else 0.02)
assert os.path.getsize("kl_qp.gif") > 10_000
assert float(jnp.abs(vi_mean - post_mean).max()) < 0.1
print("all checks passed")
