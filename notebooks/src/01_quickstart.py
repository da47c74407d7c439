# %% [markdown]
# # 01 · Quickstart: the Normal-Normal model
#
# The example of `tfp.vi.fit_surrogate_posterior`'s documentation (seed 000):
# z ~ N(0, 1), x | z ~ N(z, 1), observed x = 5. The posterior is
# N(2.5, 1/sqrt(2)) by conjugacy. We fit it with the default reverse-KL loss
# (the negative ELBO), then with the forward KL, then with every Csiszar
# f-divergence vi_jax ships.

# %%
import os

import distrax
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import vi_jax as vi

FAST = os.environ.get("VI_JAX_NOTEBOOK_FAST") == "1"
STEPS = 500 if FAST else 2000
EXACT_MEAN, EXACT_STD = 2.5, 1 / np.sqrt(2.)


def log_prob(z, x):
  return distrax.Normal(0., 1.).log_prob(z) + distrax.Normal(z, 1.).log_prob(x)


conditioned_log_prob = lambda z: log_prob(z, x=5.)

# %% [markdown]
# ## The default: reverse KL (the negative ELBO)
# `mean_field_normal(())` is q_z = N(loc, softplus(raw_scale)), its params a
# plain dict. `vi.fit` runs the whole optimization in one compiled `lax.scan`
# and returns the trace of the loss.

# %%
q_z = vi.surrogates.mean_field_normal(event_shape=(), init_scale=1.)
optimizer = optax.adam(optax.exponential_decay(0.1, STEPS, 0.02))
result = vi.fit(conditioned_log_prob, q_z, optimizer, STEPS,
                key=jax.random.key(0), sample_size=16)


def moments(params):
  return float(params["loc"][0]), float(jax.nn.softplus(params["raw_scale"][0]))


mean_rkl, std_rkl = moments(result.params)
print(f"reverse KL: q = N({mean_rkl:.3f}, {std_rkl:.3f});  exact N(2.5, {EXACT_STD:.3f})")
plt.plot(result.trace)
plt.xlabel("step"); plt.ylabel("loss (-ELBO)"); plt.yscale("symlog"); plt.show()

# %% [markdown]
# ## Forward KL, KL[p || q]
# The seed passes `tfp.vi.kl_forward` as the loss; here it is one argument.
# Forward KL is estimated by self-normalized importance sampling: more variance,
# so a larger `sample_size`.

# %%
result_fkl = vi.fit(conditioned_log_prob, q_z, optimizer, STEPS,
                    key=jax.random.key(1), sample_size=64,
                    loss=vi.losses.forward_kl())
mean_fkl, std_fkl = moments(result_fkl.params)
print(f"forward KL: q = N({mean_fkl:.3f}, {std_fkl:.3f})")

# %% [markdown]
# ## Every Csiszar f-divergence
# `vi.losses.monte_carlo_variational_loss(f)` minimizes E_q[f(p(z)/q(z))] for
# any f-function of log u. Because the posterior is in the surrogate family,
# every divergence is minimized by it. Two practical points the table makes
# visible:
#
# * Only the KLs and the self-normalized forms are indifferent to the scale of
#   p; the others (Pearson, chi-square, total variation, ...) measure
#   p/q against 1, so we give them the *normalized* posterior, log p(z, x) - log p(x)
#   (here log p(x) = log N(5; 0, sqrt 2) is known).
# * The mass-covering f's weigh draws where p/q is large; started from a q
#   narrower than p, their Monte Carlo estimate never sees those draws and the
#   fit wanders off. So the surrogate starts broad (scale 3), as one would
#   start any forward-KL-like fit.
# * `log1p_abs`, f(u) = u^sign(u-1) - 1, grows like 1/u where q >> p: from the
#   broad start, draws in q's far tails overflow float32 and the fit makes no
#   progress. `vi.fit`'s NaN safety skips every step whose loss or gradient is
#   not finite (counted in `result.num_nonfinite`), so the params stay finite
#   and the failure is reported rather than silent: the table's last column.

# %%
log_evidence = float(distrax.Normal(0., np.sqrt(2.)).log_prob(5.))
normalized_log_prob = lambda z: conditioned_log_prob(z) - log_evidence
q_broad = vi.surrogates.mean_field_normal(event_shape=(), init_scale=3.)
C = vi.csiszar
divergences = {
    "kl_reverse": C.kl_reverse,
    "kl_forward": C.kl_forward,
    "amari_alpha(0.5)": lambda u: C.amari_alpha(u, alpha=0.5),
    "jensen_shannon": lambda u: C.jensen_shannon(u, self_normalized=True),
    "arithmetic_geometric": lambda u: C.arithmetic_geometric(u, self_normalized=True),
    "chi_square": C.chi_square,
    "jeffreys": C.jeffreys,
    "log1p_abs": C.log1p_abs,
    "modified_gan": lambda u: C.modified_gan(u, self_normalized=True),
    "pearson": C.pearson,
    "squared_hellinger": C.squared_hellinger,
    "t_power(0.5)": lambda u: C.t_power(u, t=0.5, self_normalized=True),
    "total_variation": C.total_variation,
    "triangular": C.triangular,
    "symmetrized(kl_reverse)": lambda u: C.symmetrized_csiszar_function(u, C.kl_reverse),
}
rows = []
for name, f in divergences.items():
  r = vi.fit(normalized_log_prob, q_broad, optimizer, STEPS, key=jax.random.key(2),
             sample_size=64, loss=vi.losses.monte_carlo_variational_loss(f),
             progress_bar=False)
  rows.append((name, *moments(r.params), int(r.num_nonfinite)))
print(f"{'f-divergence':<26} {'mean':>7} {'std':>7}  non-finite steps skipped")
for name, m, s, skipped in rows:
  print(f"{name:<26} {m:7.3f} {s:7.3f}  {skipped}")

# %% [markdown]
# ## Check

# %%
assert abs(mean_rkl - EXACT_MEAN) < 0.05 and abs(std_rkl / EXACT_STD - 1) < 0.05
assert abs(mean_fkl - EXACT_MEAN) < 0.1 and abs(std_fkl / EXACT_STD - 1) < 0.15
for name, m, s, skipped in rows:
  if name == "log1p_abs":
    assert skipped > 0 and np.isfinite(m) and np.isfinite(s)   # reported, never corrupted
    continue
  assert abs(m - EXACT_MEAN) < 0.2 and abs(s / EXACT_STD - 1) < 0.3, (name, m, s)
print("all checks passed")
