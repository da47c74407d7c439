# %% [markdown]
# # 09 · Automatic VI you can check: `vi.auto_fit`
#
# One call chooses the start, the scaling, the optimizer's step size and
# stopping, and the family, and then says whether to trust the result:
#
# 0. a **Laplace** approximation at the MAP (L-BFGS, then the Hessian) is
#    judged first: near-Gaussian posteriors stop there for a few hundred
#    gradient evaluations;
# 1. otherwise the Laplace fit (when usable, k-hat < 0.7) or **Pathfinder**
#    (Zhang et al. 2022, a Gaussian guess `N(loc, L Lᵀ)` of the unconstrained
#    posterior along L-BFGS paths) gives the scaling; when both ran, the one
#    with the higher ELBO;
# 2. each family of the ladder (mean-field → full-rank → RealNVP flow) is fitted
#    in **whitened** coordinates `u` with `z = T(loc + L u)`: Gaussians by
#    **DADVI** (fixed draws, L-BFGS: no learning rate), the flow by Adam at a
#    fixed budget (a warmup-cosine schedule: whitening makes one schedule serve
#    every target);
# 3. a stage **passes** when the PSIS k-hat of its fit is below 0.5 *and* two
#    independent fits (different keys, one compile) agree on the PSIS-corrected
#    means (0.1 sd) and sds (10%); the ladder stops at the first family that
#    passes;
# 4. `result.sample(key, n)` gives PSIS-resampled draws when k-hat < 0.7.
#
# When no family passes it returns the best fit with `reliable=False` and a
# warning that says what failed and what to try.

# %%
import os
import warnings

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
from inference_gym import using_jax as gym
from numpyro.infer import MCMC, NUTS
from sklearn.datasets import load_breast_cancer

import vi_jax as vi

FAST = os.environ.get("VI_JAX_NOTEBOOK_FAST") == "1"
# Reduced (CI) mode: fewer draws for the verdicts, a smaller budget for the
# flow, and shorter ladders (each family is one compile): eight schools goes
# straight to the flow, the regression stops after Laplace, the funnel
# goes straight to the flow. The full mode runs auto_fit's default ladder.
SETTINGS = dict(num_draws=1000, max_grad_evals=8_000) if FAST else {}
LADDERS = (dict(schools=("flow",), bc=("laplace",),
                funnel=("flow",)) if FAST else
           dict.fromkeys(("schools", "bc", "funnel"),
                         ("laplace", "mean_field", "full_rank", "flow")))


def accuracy(draws, transform, mean_ref, sd_ref):
  """max |mean error| / sd_ref and the range of sd ratios, over all latents."""
  z = transform(draws)
  n = jax.tree_util.tree_leaves(z)[0].shape[0]
  x = np.concatenate([np.reshape(np.asarray(l), (n, -1))
                      for l in jax.tree_util.tree_leaves(z)], axis=1)
  flat = lambda t: np.concatenate([np.ravel(np.asarray(l))
                                   for l in jax.tree_util.tree_leaves(t)])
  err = np.abs(x.mean(0) - flat(mean_ref)) / flat(sd_ref)
  ratio = x.std(0) / flat(sd_ref)
  return err.max(), ratio.min(), ratio.max()


# %% [markdown]
# ## Eight schools (inference_gym, the centered model)
# Ten latents; the reference moments are inference_gym's ground truth from
# long NUTS runs. `verbose=True` prints each stage as it finishes.

# %%
schools = vi.adapters.from_inference_gym(gym.targets.EightSchools())
with warnings.catch_warnings(record=True) as schools_warnings:
  warnings.simplefilter("always")
  r_schools = vi.auto_fit(schools.target_log_prob_fn, schools.event_shape,
                          schools.bijector, key=jax.random.key(0), verbose=True,
                          families=LADDERS["schools"], **SETTINGS)
print()
print(r_schools.summary())

# %%
draws = r_schools.sample(jax.random.key(1), 4000)
err_s, lo_s, hi_s = accuracy(draws, schools.reference.transform,
                             schools.reference.mean,
                             schools.reference.standard_deviation)
print(f"family {r_schools.family}, k-hat {r_schools.k_hat:.2f}, "
      f"reliable {r_schools.reliable}")
print(f"against NUTS: max |mean err| {err_s:.3f} sd, sd ratios "
      f"{lo_s:.2f}..{hi_s:.2f}, {r_schools.num_grad_evals:,} gradient "
      "evaluations")

# %% [markdown]
# The history is data (`StageRecord`s), so a script can read what each stage
# did:

# %%
for h in r_schools.history:
  print(f"{h.family:<11} k-hat {h.k_hat:5.2f}  ELBO {h.elbo:9.3f}  "
        f"grad evals {h.num_grad_evals:>7,}  passed {h.passed}")

# %% [markdown]
# ## A logistic regression written in NumPyro (breast cancer, 31 latents)
# Scikit-learn's breast-cancer data (569 rows, 30 standardized features),
# `w ~ N(0, 1)`, through `vi.adapters.from_numpyro`. The reference is
# NumPyro's NUTS on the same model.

# %%
x_bc, y_bc = load_breast_cancer(return_X_y=True)
x_bc = (x_bc - x_bc.mean(0)) / x_bc.std(0)
x_bc = np.concatenate([np.ones((len(x_bc), 1)), x_bc], axis=1)


def logistic_regression(x, y=None):
  w = numpyro.sample("w", dist.Normal(0., 1.).expand([x.shape[1]]).to_event(1))
  numpyro.sample("y", dist.Bernoulli(logits=x @ w), obs=y)


bc = vi.adapters.from_numpyro(logistic_regression, x_bc, y=y_bc)
r_bc = vi.auto_fit(bc.target_log_prob_fn, bc.event_shape, bc.bijector,
                   key=jax.random.key(2), families=LADDERS["bc"], **SETTINGS)
print(r_bc.summary())

nuts = MCMC(NUTS(logistic_regression), num_warmup=200 if FAST else 1000,
            num_samples=300 if FAST else 2000, progress_bar=False)
nuts.run(jax.random.key(3), x_bc, y=y_bc)
w_nuts = np.asarray(nuts.get_samples()["w"])
w_vi = np.asarray(r_bc.sample(jax.random.key(4), 4000)["w"])
err_bc = np.max(np.abs(w_vi.mean(0) - w_nuts.mean(0)) / w_nuts.std(0))
ratio_bc = w_vi.std(0) / w_nuts.std(0)
print(f"against NUTS: max |mean err| {err_bc:.3f} sd, sd ratios "
      f"{ratio_bc.min():.2f}..{ratio_bc.max():.2f}")

# %% [markdown]
# ## Where it says no: Neal's funnel
# `v ~ N(0, 3)`, `x_i ~ N(0, exp(v / 2))`: the scale of `x` changes by orders
# of magnitude along `v`. No Gaussian fits it, and a small flow fitted by
# reverse KL misses the neck. auto_fit tries every family, and when none
# passes it says so: `reliable=False`, a high k-hat, and a warning that
# names the fix for hierarchical models, a non-centered parameterization.

# %%
funnel = vi.adapters.from_inference_gym(gym.targets.NealsFunnel(ndims=3))
with warnings.catch_warnings(record=True) as funnel_warnings:
  warnings.simplefilter("always")
  r_funnel = vi.auto_fit(funnel.target_log_prob_fn, funnel.event_shape,
                         funnel.bijector, key=jax.random.key(5),
                         families=LADDERS["funnel"], **SETTINGS)
print(r_funnel.summary())
print()
for w in funnel_warnings:
  if "vi.auto_fit" in str(w.message):
    print(w.message)

# %% [markdown]
# ## ArviZ
# `result.to_inference_data(key, n)` exports q's draws with their log weights
# and the PSIS diagnostics, as `vi.export.to_inference_data` does.

# %%
idata = r_schools.to_inference_data(jax.random.key(6), 1000)
print(idata.posterior)

# %% [markdown]
# ## Check

# %%
assert r_schools.history[0].family in ("laplace", "pathfinder")
assert r_schools.num_grad_evals == sum(h.num_grad_evals for h in r_schools.history)
if r_schools.reliable:  # a reliable verdict must be right
  assert err_s < 0.1 and 0.9 < lo_s and hi_s < 1.1, (err_s, lo_s, hi_s)
else:
  assert any("vi.auto_fit" in str(w.message) for w in schools_warnings)
if r_bc.reliable:
  assert err_bc < 0.15 and 0.85 < ratio_bc.min() and ratio_bc.max() < 1.15
assert not any(h.passed for h in r_funnel.history  # no Gaussian fits a funnel
               if h.family in ("laplace", "mean_field", "full_rank"))
if not r_funnel.reliable:
  assert "flow" in [h.family for h in r_funnel.history]
  assert any("non-centered" in str(w.message) for w in funnel_warnings)
else:  # a reliable verdict on the funnel must come from the flow
  assert r_funnel.family == "flow" and r_funnel.k_hat < 0.5
assert idata.posterior["avg_effect"].shape == (1, 1000)
print("all checks passed")
