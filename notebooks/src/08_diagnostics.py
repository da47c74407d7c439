# %% [markdown]
# # 08 · Can the fit be trusted? PSIS k-hat, ArviZ export, restarts
#
# Yao, Vehtari, Simpson & Gelman (2018), "Yes, but did it work?": the Pareto
# shape k-hat of the importance ratios p/q tells whether q is a usable
# proposal for the posterior (k-hat < 0.5 good, < 0.7 usable, above unreliable).
# Then: exporting a fit to ArviZ, and restarts vmapped in one compile.

# %%
import os

import arviz as az
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
decay = optax.adam(optax.exponential_decay(0.05, STEPS, 0.05))

# %% [markdown]
# ## A good fit: the Normal-Normal model
# The surrogate family contains the posterior, so k-hat is small and the
# importance-weighted log Z matches the exact evidence log N(5; 0, sqrt 2).

# %%
def normal_normal(z):
  return distrax.Normal(0., 1.).log_prob(z) + distrax.Normal(z, 1.).log_prob(5.)


q = vi.surrogates.mean_field_normal(())
good = vi.fit(normal_normal, q, decay, STEPS, key=jax.random.key(0), sample_size=16)
d_good = vi.diagnostics.diagnose(normal_normal, q, good.params, jax.random.key(1), 4000)
log_z_true = float(distrax.Normal(0., np.sqrt(2.)).log_prob(5.))
print(f"k-hat {float(d_good.pareto_k):.3f} ({vi.diagnostics.pareto_k_message(float(d_good.pareto_k))})")
print(f"log Z estimate {float(d_good.log_z):.4f} ± {float(d_good.log_z_se):.4f}; exact {log_z_true:.4f}")

# %% [markdown]
# ## A bad fit: a Gaussian on a heavy-tailed target
# Five independent Student-t's with 2 degrees of freedom: reverse KL makes the Gaussian too
# narrow in the tails, and k-hat flags it.

# %%
student = tfd.Independent(tfd.StudentT(df=2., loc=jnp.zeros(5), scale=1.), 1)
q5 = vi.surrogates.mean_field_normal((5,))
bad = vi.fit(student.log_prob, q5, decay, STEPS, key=jax.random.key(2), sample_size=16)
d_bad = vi.diagnostics.diagnose(student.log_prob, q5, bad.params, jax.random.key(3), 4000)
print(f"k-hat {float(d_bad.pareto_k):.3f} ({vi.diagnostics.pareto_k_message(float(d_bad.pareto_k))}); "
      f"IS ESS {float(d_bad.ess):.0f} of 4000")

# %% [markdown]
# ## Export to ArviZ: eight schools
# Draws in the constrained space, one variable per latent, with the loss trace
# and the diagnostics attached; `az.summary` and ArviZ's plots work as for MCMC.

# %%
from inference_gym import using_jax as gym

model = vi.adapters.from_inference_gym(gym.targets.EightSchools())
schools_q = vi.surrogates.full_rank_normal(model.event_shape, model.bijector)
schools = vi.fit(model.target_log_prob_fn, schools_q, decay, STEPS,
                 key=jax.random.key(4), sample_size=16)
idata = vi.export.to_inference_data(schools_q, schools.params, jax.random.key(5), 2000,
                                    target_log_prob_fn=model.target_log_prob_fn,
                                    loss_trace=schools.trace, num_chains=4)
table = az.summary(idata, kind="stats")
print(table)
print("pareto k of the eight-schools fit:", idata.posterior.attrs["pareto_k"])
import io

from IPython.display import Image, display

fig = vi.plots.plot_loss(schools.trace)   # a matplotlib Figure (no pyplot state)
buffer = io.BytesIO()
fig.savefig(buffer, format="png", dpi=80)
display(Image(buffer.getvalue()))

# %% [markdown]
# ## Restarts, vmapped in one compile
# A bimodal target with well-separated modes, 0.2 N(-5, 1) + 0.8 N(5, 1),
# fitted by a single Normal from 8 random starts: each run lands on one mode
# (reverse KL is zero-forcing), with final loss -log(weight of that mode); the
# best run is the heavier mode, loss -log 0.8 = 0.223.

# %%
mix = distrax.MixtureSameFamily(
    distrax.Categorical(probs=jnp.array([0.2, 0.8])),
    distrax.Normal(jnp.array([-5., 5.]), jnp.array([1., 1.])))
q_wide = vi.surrogates.mean_field_normal((), init_loc_radius=8., init_scale=0.5)
restarts = vi.restarts.fit_restarts(mix.log_prob, q_wide, decay, STEPS,
                                    key=jax.random.key(6), num_restarts=8,
                                    final_window=100)
locs = np.asarray(restarts.all.params["loc"][:, 0])
print("final locs of the 8 runs:", np.round(locs, 2))
print("final losses:", np.round(np.asarray(restarts.final_losses), 3))
print("best run:", int(restarts.best_index), "loc", float(restarts.best.params["loc"][0]))

# %% [markdown]
# ## Check

# %%
assert float(d_good.pareto_k) < 0.5
assert abs(float(d_good.log_z) - log_z_true) < 2 * float(d_good.log_z_se) + 1e-3
assert float(d_bad.pareto_k) > 0.7
assert set(table.index) >= {"avg_effect", "log_stddev"} and len(table) == 10
assert abs(float(restarts.best.params["loc"][0]) - 5.) < 0.3
assert abs(float(restarts.final_losses[restarts.best_index]) + np.log(0.8)) < 0.05
assert (np.abs(locs + 5) < 0.5).any()              # some restart found the other mode
print("all checks passed")
