"""The posteriordb targets (`benchmarks.posteriordb.targets`) against their references.

The check that ties each JAX density to posteriordb's reference draws is the
Stein identity: for `z ~ p` and `u = bijector^-1(z)`, `E[grad_u log p~(u)] = 0`,
`p~` the density in the unconstrained space (log-det-Jacobian included). Over
1000 (nearly independent) reference draws, the mean gradient over its standard
error is a t-statistic per coordinate, |t| < 5 for the right density. A density
that moves the posterior by about 5 / sqrt(1000) = 0.16 posterior sd in some
direction fails it: the last tests perturb eight schools (a prior scale off by
2x, the Jacobian counted twice) and check that it does.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.posteriordb import targets as pdb
from vi_jax.model.bijectors import latent_space

THRESHOLD = 5.
NAMES = pdb.names()


def test_the_set_of_posteriors():
  assert len(NAMES) >= 10
  assert len(set(NAMES)) == len(NAMES)
  sizes = [os.path.getsize(os.path.join(pdb.DATA_DIR, f)) for f in os.listdir(pdb.DATA_DIR)]
  assert sum(sizes) < 5e6, sum(sizes)
  assert sorted(os.listdir(pdb.DATA_DIR)) == sorted(f"{n}.npz" for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_order_and_reference(name):
  t = pdb.get(name)
  assert t["meta"]["posteriordb_commit"] == pdb.POSTERIORDB_COMMIT
  assert t["meta"]["num_reference_draws"] == 10000
  assert 3 <= t["dim"] <= 30
  space = latent_space(t["event_shape"], t["bijector"])
  assert space.dim == t["dim"]
  draws = t["ref_draws"]
  assert set(draws) == set(t["event_shape"])
  for k, shape in t["event_shape"].items():
    assert draws[k].shape == (1000,) + tuple(shape), k
  # flatten follows jax.tree_util.tree_leaves of a draw, and unflatten inverts it.
  one = {k: v[3] for k, v in draws.items()}
  leaves = np.concatenate([np.ravel(l) for l in jax.tree_util.tree_leaves(one)])
  with jax.enable_x64(True):
    np.testing.assert_array_equal(np.asarray(t["flatten"](one)), leaves)
    flat = np.asarray(t["flatten"](draws))
    back = t["unflatten"](flat)
  assert flat.shape == (1000,) + t["ref_mean"].shape == (1000,) + t["ref_sd"].shape
  for k in draws:
    np.testing.assert_array_equal(np.asarray(back[k]), draws[k])
  # The thinned draws are a sample of the reference whose moments are shipped.
  assert np.all(t["ref_sd"] > 0)
  z = np.abs(flat.mean(0) - t["ref_mean"]) / t["ref_sd"]
  assert np.max(z) < 0.2, z


@pytest.mark.parametrize("name", NAMES)
def test_finite_scalar_at_reference_mean(name):
  t = pdb.get(name)
  with jax.enable_x64(True):
    lp = t["target_log_prob_fn"](**t["unflatten"](t["ref_mean"]))
    assert lp.shape == () and lp.dtype == jnp.float64 and np.isfinite(lp)
  if not t["x64"]:
    mean32 = t["unflatten"](t["ref_mean"].astype(np.float32))
    lp32 = jax.jit(lambda z: t["target_log_prob_fn"](**z))(mean32)
    assert lp32.shape == () and lp32.dtype == jnp.float32 and np.isfinite(lp32)
    assert abs(float(lp32) - float(lp)) <= 1e-4 * max(1., abs(float(lp))), (lp32, lp)


@pytest.mark.parametrize("name", NAMES)
def test_stein_identity_on_reference_draws(name):
  t = pdb.get(name)
  with jax.enable_x64(True):
    stats = pdb.stein_statistics(t)
  assert stats.shape == (t["dim"],)
  assert np.all(np.isfinite(stats)), stats
  assert np.max(np.abs(stats)) < THRESHOLD, np.round(stats, 2)


def _cauchy(x, scale):
  return jax.scipy.stats.cauchy.logpdf(x, 0., scale)


def _normal(x, scale):
  return jax.scipy.stats.norm.logpdf(x, 0., scale)


@pytest.mark.parametrize("perturbation", ["mu_prior_scale_x2", "tau_prior_scale_half",
                                          "jacobian_twice"])
def test_stein_check_fails_for_a_wrong_density(perturbation):
  t = pdb.get("eight_schools-eight_schools_noncentered")
  delta = {
      # mu ~ normal(0, 10) in place of normal(0, 5)
      "mu_prior_scale_x2": lambda z: _normal(z["mu"], 10.) - _normal(z["mu"], 5.),
      # tau ~ cauchy(0, 2.5) in place of cauchy(0, 5)
      "tau_prior_scale_half": lambda z: _cauchy(z["tau"], 2.5) - _cauchy(z["tau"], 5.),
      # the target adds the log-det-Jacobian of tau's transform itself
      "jacobian_twice": lambda z: jnp.log(z["tau"]),
  }[perturbation]
  wrong = lambda **z: t["target_log_prob_fn"](**z) + delta(z)
  with jax.enable_x64(True):
    stats = pdb.stein_statistics(t, wrong)
  assert np.max(np.abs(stats)) > THRESHOLD, np.round(stats, 2)
