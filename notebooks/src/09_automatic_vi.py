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
import time
import warnings

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
from inference_gym import using_jax as gym
from numpyro.infer import MCMC, NUTS
from scipy.stats import gaussian_kde
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
# The budgeted call (`max_time`) runs the default ladder in both modes; in the
# reduced mode its budget (0.5 s) is spent by the Laplace stage, so the other
# stages are not run.
LADDERS["budget"] = ("laplace", "mean_field", "full_rank", "flow")


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
t_first = time.perf_counter()
with warnings.catch_warnings(record=True) as schools_warnings:
  warnings.simplefilter("always")
  r_schools = vi.auto_fit(schools.target_log_prob_fn, schools.event_shape,
                          schools.bijector, key=jax.random.key(0), verbose=True,
                          families=LADDERS["schools"], **SETTINGS)
elapsed_first = time.perf_counter() - t_first
print()
print(r_schools.summary())
print(f"{elapsed_first:.1f} s for the whole call")

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
# ### The marginals against a reference
# inference_gym ships eight schools' reference *moments* (mean and sd of each
# latent, from long NUTS runs), not its draws. For reference curves, NumPyro's
# NUTS samples the same posterior in the **non-centered** form of the model
# (same priors and data, `school_effects = avg_effect + exp(log_stddev) z` with
# `z ~ N(0, 1)`, which has no funnel for NUTS to diverge in): one chain of
# 20,000 draws after 1,000 warmup steps, a few seconds (mostly compilation),
# its moments checked against inference_gym's at the end (within 0.1 sd).

# %%
# The data of inference_gym's EightSchools (its docstring).
Y_SCHOOLS = np.array([28., 8., -3., 7., -1., 1., 18., 12.])
SD_SCHOOLS = np.array([15., 10., 16., 11., 9., 11., 10., 18.])


def eight_schools_noncentered(sd, y=None):
  avg_effect = numpyro.sample("avg_effect", dist.Normal(0., 10.))
  log_stddev = numpyro.sample("log_stddev", dist.Normal(5., 1.))
  z = numpyro.sample("z", dist.Normal(0., 1.).expand([len(sd)]).to_event(1))
  effects = numpyro.deterministic("school_effects",
                                  avg_effect + jnp.exp(log_stddev) * z)
  numpyro.sample("y", dist.Normal(effects, sd).to_event(1), obs=y)


def columns(tree):
  """Draws of the eight-schools latents as named `[n]` columns."""
  out = {"avg_effect": np.asarray(tree["avg_effect"]),
         "log_stddev": np.asarray(tree["log_stddev"])}
  effects = np.asarray(tree["school_effects"])
  out.update({f"school_effects[{i}]": effects[:, i]
              for i in range(effects.shape[1])})
  return out


t_nuts = time.perf_counter()
nuts_schools = MCMC(NUTS(eight_schools_noncentered), num_warmup=1000,
                    num_samples=20_000, progress_bar=False)
nuts_schools.run(jax.random.key(7), SD_SCHOOLS, y=Y_SCHOOLS)
t_nuts = time.perf_counter() - t_nuts
ref_cols = columns(nuts_schools.get_samples())
vi_cols = columns(schools.reference.transform(draws))
gym_mean = columns(jax.tree_util.tree_map(lambda x: np.asarray(x)[None],
                                          schools.reference.mean))
gym_sd = columns(jax.tree_util.tree_map(lambda x: np.asarray(x)[None],
                                        schools.reference.standard_deviation))
nuts_err = max(abs(ref_cols[k].mean() - gym_mean[k][0]) / gym_sd[k][0]
               for k in ref_cols)
nuts_ratio = np.array([ref_cols[k].std() / gym_sd[k][0] for k in ref_cols])
print(f"NUTS (non-centered), {len(ref_cols['avg_effect']):,} draws in "
      f"{t_nuts:.1f} s: max |mean - inference_gym's| {nuts_err:.3f} sd, sd "
      f"ratios {nuts_ratio.min():.2f}..{nuts_ratio.max():.2f}")

# %% [markdown]
# One panel per latent: the histogram is `r_schools.sample(key, 4000)` (the
# draws above, PSIS-resampled when k-hat < 0.7), the black line the NUTS
# density (a Gaussian KDE of its draws); the title gives q's mean error in
# reference sds and its sd ratio (inference_gym's moments). Close marginals
# are necessary, not sufficient: a family can match every marginal and still
# be judged not reliable, because k-hat reads the *joint* density ratio p / q
# on q's draws, and the funnel between `log_stddev` and the school effects
# (the centered model's difficulty) shows in no single marginal.

# %%
fig_marginals, axes = plt.subplots(2, 5, figsize=(14, 5.6))
hist_err = {}
for ax, name in zip(axes.ravel(), ref_cols):
  ref, x = ref_cols[name], vi_cols[name]
  lo, hi = np.percentile(ref, [0.5, 99.5])
  lo, hi = lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)
  bins = np.linspace(lo, hi, 41)
  # a density over all of q's draws (those outside the window count too)
  per_draw = 1. / (len(x) * (bins[1] - bins[0]))
  ax.hist(x, bins=bins, weights=np.full(len(x), per_draw), color="tab:blue",
          alpha=0.45, label=f"auto_fit ({r_schools.family})")
  grid = np.linspace(lo, hi, 300)
  ax.plot(grid, gaussian_kde(ref)(grid), "k", lw=1.5, label="NUTS reference")
  hist_err[name] = (x.mean() - gym_mean[name][0]) / gym_sd[name][0]
  ax.set_title(f"{name}\nmean {hist_err[name]:+.2f} sd, sd x"
               f"{x.std() / gym_sd[name][0]:.2f}", fontsize=10)
  ax.set_yticks([])
  ax.set_xlim(lo, hi)
axes[0, 0].legend(fontsize=8, loc="upper left")
fig_marginals.suptitle(
    f"eight schools: auto_fit's {r_schools.family} fit (k-hat "
    f"{r_schools.k_hat:.2f}, reliable={r_schools.reliable}) against NUTS")
fig_marginals.tight_layout()
plt.show()

# %% [markdown]
# The history is data (`StageRecord`s), so a script can read what each stage
# did:

# %%
for h in r_schools.history:
  print(f"{h.family:<11} k-hat {h.k_hat:5.2f}  ELBO {h.elbo:9.3f}  "
        f"grad evals {h.num_grad_evals:>7,}  passed {h.passed}")

# %% [markdown]
# ### A time budget: `max_time`
# `max_time=` (seconds, compilation included) bounds a call: a family
# stage's fits run in chunks and stop when the time left is what the stage's
# evaluation needs, and are judged as they are (the note says "stopped");
# stages not started by then are recorded as "not run", and the best fit so
# far comes back, `reliable` only if it passed. The L-BFGS runs of Laplace and
# Pathfinder stop at the deadline too (a Laplace stage so cut short does not
# pass), but the first fitting stage always ends with its Hessian and
# evaluation, so a very short budget is overrun, and a stage that starts just
# before the deadline can run past it (its programs compile first). Without
# `max_time`, a call has a budget of 100 s (`max_time=None`: no limit), so a
# default call never hangs. Here the same ladder with a budget
# of a third of the first call's time, on a fresh adapter of eight schools: a
# new target function, so the target's own programs (its value and gradient
# kernels, the flow's Adam loop) compile again, while the target-free stage
# programs compiled for the first call (draws, verdict, Pathfinder's
# Gaussians: shared by every target of the same dimension) are reused. (The
# reduced mode
# gives it 0.5 s, which the Laplace stage alone overruns.)
# `progress_bar=True` shows the stage running and the seconds so far.

# %%
budget = 0.5 if FAST else elapsed_first / 3
schools_fresh = vi.adapters.from_inference_gym(gym.targets.EightSchools())
t_budget = time.perf_counter()
with warnings.catch_warnings(record=True):
  warnings.simplefilter("always")
  r_budget = vi.auto_fit(schools_fresh.target_log_prob_fn,
                         schools_fresh.event_shape, schools_fresh.bijector,
                         key=jax.random.key(8), families=LADDERS["budget"],
                         max_time=budget, progress_bar=False, **SETTINGS)
elapsed_budget = time.perf_counter() - t_budget
print(r_budget.summary())
print(f"\nmax_time={budget:.1f} s: the call took {elapsed_budget:.1f} s")

# %% [markdown]
# Where the time went, for both calls, stage by stage: each bar is a stage's
# `wall_time`, laid end to end from the start of the call (so the dashed
# `max_time` line is the deadline), with its target-gradient evaluations as
# text. On a first call most of each bar is XLA compiling the stage's
# programs, which is why the times hardly follow the gradient counts (a
# hundred evaluations for Laplace take about as long as tens of thousands for
# the flow); a second call on the same target reuses them.
# Green: the stage passed; orange: its fits were stopped by the budget; gray:
# it failed (or, for Pathfinder, it is the start, which is never "passed").
# Pathfinder's count leaves out its density evaluations (its note gives them).

# %%
def time_bars(ax, history, title, max_time=None):
  """The stages of one call as a timeline: one bar per `StageRecord`."""
  rows = list(history)
  starts = np.cumsum([0.] + [h.wall_time for h in rows[:-1]])
  y = -np.arange(len(rows))  # the first stage on top
  colors = ["tab:green" if h.passed else "tab:orange" if "stopped" in h.note
            else "tab:gray" for h in rows]
  ax.barh(y, [h.wall_time for h in rows], left=starts, color=colors,
          height=0.6)
  for yi, x0, h in zip(y, starts, rows):
    text = ("not run" if h.method == "not run" else
            f"{h.wall_time:.2g} s, {h.num_grad_evals:,} grad evals"
            + (", stopped" if "stopped" in h.note else ""))
    ax.text(x0 + h.wall_time, yi, "  " + text, va="center", fontsize=9,
            bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0))
  ax.set_yticks(y, [f"{h.family} ({h.method})" for h in rows])
  if max_time is not None:
    ax.axvline(max_time, color="k", ls="--", lw=1,
               label=f"max_time = {max_time:.1f} s")
    ax.legend(loc="lower right", fontsize=9)
  ax.set_title(title, fontsize=10)


fig_time, (ax_first, ax_budget) = plt.subplots(2, 1, figsize=(10, 6.5),
                                               sharex=True)
time_bars(ax_first, r_schools.history,
          f"first call: {elapsed_first:.1f} s (compiles each stage's programs)")
time_bars(ax_budget, r_budget.history,
          f"budgeted call, max_time={budget:.1f} s: {elapsed_budget:.1f} s "
          "(a fresh target: compiles again)", max_time=budget)
ax_budget.set_xlim(0, 1.3 * max(elapsed_first, elapsed_budget))
ax_budget.set_xlabel("seconds into the call (stages end to end)")
fig_time.tight_layout()
plt.show()

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
# The NUTS reference of the figure agrees with inference_gym's moments.
assert nuts_err < 0.1 and 0.9 < nuts_ratio.min() and nuts_ratio.max() < 1.1, (
    nuts_err, nuts_ratio)
assert len(hist_err) == 10 and len(fig_marginals.axes) == 10
if r_schools.reliable:  # each marginal of a reliable fit is close
  assert max(abs(e) for e in hist_err.values()) < 0.5, hist_err
# The stage times lie within the call, one bar per stage.
assert sum(h.wall_time for h in r_schools.history) <= elapsed_first
assert len(ax_first.patches) == len(r_schools.history)
# The budget: it bit (a stage stopped or not run), no stage but the first
# started after it was spent, and nothing ran after the last stage started.
assert any("time budget was spent" in h.note for h in r_budget.history)
ran = [h for h in r_budget.history if h.method != "not run"]
starts = np.cumsum([0.] + [h.wall_time for h in ran[:-1]])
assert all(s < budget for s in starts[1:]), (starts, budget)
assert elapsed_budget < budget + ran[-1].wall_time + 2., (
    elapsed_budget, budget, ran[-1])
print("all checks passed")
