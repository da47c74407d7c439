"""Pathfinder against blackjax.vi.pathfinder and closed-form Gaussian posteriors."""

import importlib

import blackjax
from blackjax.optimizers import lbfgs as bj_lbfgs
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import tensorflow_probability.substrates.jax as tfp

import vi_jax as vi

pf_module = importlib.import_module("vi_jax.solvers.multipath_pathfinder")
tfb, tfd = tfp.bijectors, tfp.distributions

_RNG = np.random.default_rng(0)
_A = _RNG.normal(size=(3, 3))
COV = _A @ _A.T + 0.3 * np.eye(3)
MEAN = np.array([1., -2., 0.5])
PREC = np.linalg.inv(COV)
X0 = jnp.array([2., 1., -1.])


def gaussian(x):
  d = x - MEAN
  return -0.5 * d @ PREC @ d


def funnel(v, x):
  return (tfd.Normal(0., 3.).log_prob(v) +
          jnp.sum(tfd.Normal(0., jnp.exp(v / 2.)).log_prob(x)))


def _blackjax_h(state):
  return np.asarray(bj_lbfgs.lbfgs_inverse_hessian_formula_1(
      state.alpha, state.beta, state.gamma))


def test_inverse_hessian_diagonal_update_and_draws_match_blackjax():
  dim, m = 5, 4
  rng = np.random.default_rng(1)
  b = rng.normal(size=(dim, dim))
  hess = b @ b.T + np.eye(dim)
  s = rng.normal(size=(m, dim))
  z = s @ hess                              # gradient differences of a quadratic
  alpha = np.exp(rng.normal(size=dim))
  filled = np.array([False, True, True, True])
  s[0], z[0] = 0., 0.                       # an empty (never filled) slot
  beta, gamma = pf_module._inverse_hessian_factors(
      jnp.asarray(alpha), jnp.asarray(s), jnp.asarray(z), jnp.asarray(filled))
  ours = np.diag(alpha) + np.asarray(beta @ gamma @ beta.T)
  bj_beta, bj_gamma = bj_lbfgs.lbfgs_inverse_hessian_factors(
      jnp.asarray(s[1:].T), jnp.asarray(z[1:].T), jnp.asarray(alpha))
  ref = np.asarray(bj_lbfgs.lbfgs_inverse_hessian_formula_1(
      jnp.asarray(alpha), bj_beta, bj_gamma))
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ours @ z[-1], s[-1], rtol=1e-4, atol=1e-4)  # secant
  new_alpha = pf_module._diagonal_update(jnp.asarray(alpha), jnp.asarray(s[-1]),
                                         jnp.asarray(z[-1]))
  bj_alpha, _ = bj_lbfgs.lbfgs_recover_alpha(
      jnp.asarray(alpha), jnp.asarray(s[-1]), jnp.asarray(z[-1]))
  np.testing.assert_allclose(new_alpha, bj_alpha, rtol=1e-5)
  g = pf_module._Gaussian(jnp.arange(dim, dtype=jnp.float32),
                          jnp.asarray(alpha, jnp.float32), beta, gamma)
  x, log_q = pf_module._sample(g, jax.random.key(0), 7)
  ref_q = scipy.stats.multivariate_normal(np.arange(dim), ours).logpdf(
      np.asarray(x))
  np.testing.assert_allclose(log_q, ref_q, rtol=1e-4, atol=1e-4)
  points = x + jax.random.normal(jax.random.key(1), x.shape)
  np.testing.assert_allclose(
      pf_module._log_prob(g, points),
      scipy.stats.multivariate_normal(np.arange(dim), ours).logpdf(
          np.asarray(points)), rtol=1e-4, atol=1e-3)
  tril = np.asarray(pf_module._scale_tril(g))
  np.testing.assert_allclose(tril @ tril.T, ours, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.triu(tril, 1), 0.)


def test_best_elbo_gaussian_matches_blackjax_and_closed_form():
  # One path from X0, blackjax with the same L-BFGS settings; 256 ELBO draws
  # so that the best-ELBO iterate is one of the last (with 32, either picks
  # an earlier iterate up to 0.7 sd off now and then).
  ours = vi.pathfinder(gaussian, (3,), key=jax.random.key(0), init_loc=X0,
                       init_radius=0., num_paths=1, num_elbo_draws=256)
  state, _ = blackjax.vi.pathfinder.approximate(
      jax.random.key(0), gaussian, X0, num_samples=256, maxiter=1000, maxcor=6,
      maxls=20)
  h = _blackjax_h(state)
  # The paper's mean x + H grad log p(x) (blackjax's sampler adds H times the
  # gradient of -log p instead); both are within 1e-2 sd of the mode here.
  bj_mean = np.asarray(state.position) - h @ np.asarray(state.grad_position)
  cov = np.asarray(ours.scale_tril @ ours.scale_tril.T)
  sd = np.sqrt(np.diag(COV))
  np.testing.assert_allclose(ours.loc, MEAN, atol=0.02 * sd.min())
  np.testing.assert_allclose(ours.loc, bj_mean, atol=0.02 * sd.min())
  # Covariances: each within 25% of the exact one and of each other in every
  # direction (generalized eigenvalues).
  for a, b in ((cov, COV), (h, COV), (cov, h)):
    eig = scipy.linalg.eigh(a, b, eigvals_only=True)
    assert 0.75 < eig.min() and eig.max() < 1.33, eig
  chex.assert_trees_all_close(
      vi.surrogates.full_rank_scale_tril(ours.params), ours.scale_tril,
      rtol=1e-5, atol=1e-6)
  log_z = 0.5 * np.linalg.slogdet(2 * np.pi * COV)[1]
  assert np.all(log_z - 0.3 < ours.elbo) and np.all(ours.elbo < log_z + 0.2)


def test_pooled_draws_k_hat_and_one_compile_for_two_calls(count_compiles):
  run = lambda seed: vi.pathfinder(gaussian, (3,), key=jax.random.key(seed))
  first = run(0)
  with count_compiles() as compiles:
    second = run(1)
  assert not compiles
  for r in (first, second):
    chex.assert_shape([r.loc, r.scale_tril, r.elbo, r.draws, r.k_hat],
                      [(3,), (3, 3), (4,), (1000, 3), ()])
    assert r.num_grad_evals.dtype == r.num_density_evals.dtype == jnp.int32
    # Gradients: 4 paths x (start + line-search trials), at least one
    # iteration each; density alone: 32 ELBO draws per iterate + 4 x 1000.
    assert 4 * 2 <= int(r.num_grad_evals) < 4 * 40 * 40
    iterate_draws = int(r.num_density_evals) - 4 * 1000
    assert iterate_draws >= 4 * 32 and iterate_draws % 32 == 0
    assert iterate_draws // 32 <= int(r.num_grad_evals) - 4
    assert float(r.k_hat) < 0.7
    sd = np.sqrt(np.diag(COV))
    np.testing.assert_allclose(r.draws.mean(0), MEAN, atol=0.15 * sd.min())
    np.testing.assert_allclose(r.draws.std(0), sd, rtol=0.15)


def test_jit_and_vmap_over_keys_agree_with_eager_calls():
  run = lambda key: vi.pathfinder(gaussian, (3,), key=key, num_draws=200)
  keys = jax.random.split(jax.random.key(3), 2)
  locs, elbos = jax.jit(jax.vmap(lambda k: (run(k).loc, run(k).elbo)))(keys)
  for i in range(2):
    eager = run(keys[i])
    np.testing.assert_allclose(locs[i], eager.loc, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(elbos[i], eager.elbo, rtol=1e-4, atol=1e-4)


def test_funnel_pytree_latents_and_bijector_keep_the_best_iterate():
  event_shape = {"v": (), "x": (2,), "s": ()}
  bijector = {"v": None, "x": None, "s": tfb.Softplus()}

  def target(v, x, s):
    return funnel(v, x) + tfd.Gamma(2., 2.).log_prob(s)

  r = vi.pathfinder(target, event_shape, bijector, key=jax.random.key(0),
                    num_draws=300)
  assert np.all(np.isfinite(np.asarray(r.elbo)))
  chex.assert_tree_all_finite((r.draws, r.loc, r.scale_tril))
  chex.assert_shape([r.draws["v"], r.draws["x"], r.draws["s"]],
                    [(300,), (300, 2), (300,)])
  assert float(jnp.min(r.draws["s"])) > 0.
  z, log_q = r.surrogate.sample_and_log_prob(r.params, jax.random.key(1), 5)
  chex.assert_trees_all_close(r.surrogate.log_prob(r.params, z), log_q,
                              rtol=1e-4, atol=1e-4)
  # The surrogate is the best path's best-ELBO Gaussian (its 32-draw ELBO
  # estimate, a maximum over iterates, is optimistic).
  elbo = vi.diagnostics.diagnose(target, r.surrogate, r.params,
                                 jax.random.key(2), 2000).elbo
  assert -3. < float(elbo) - float(jnp.max(r.elbo)) < 0.5


@pytest.mark.parametrize("kwargs, match", [
    ({"key": None}, "key"),
    ({"num_paths": 0}, "num_paths"),
    ({"num_draws": 2.5}, "num_draws"),
    ({"history_size": True}, "history_size"),
    ({"init_radius": -1.}, "init_radius"),
    ({"event_shape": "abc"}, "event_shape"),
    ({"target_log_prob_fn": lambda x: x}, "target_log_prob_fn"),
])
def test_bad_input_errors_name_the_argument(kwargs, match):
  args = {"target_log_prob_fn": gaussian, "event_shape": (3,),
          "key": jax.random.key(0)}
  args.update(kwargs)
  with pytest.raises((TypeError, ValueError), match=match):
    vi.pathfinder(args.pop("target_log_prob_fn"), args.pop("event_shape"),
                  **args)


def test_exports():
  assert vi.PathfinderResult._fields == (
      "surrogate", "params", "loc", "scale_tril", "elbo", "draws", "k_hat",
      "num_grad_evals", "num_density_evals")
