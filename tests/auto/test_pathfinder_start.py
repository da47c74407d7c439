"""The host-driven Pathfinder of auto_fit's start: the closed form on a
Gaussian, the same Gaussians as `vi.pathfinder`'s `_step` at the same
iterates, `vi.pathfinder`'s answer on a logistic regression, no compile on a
second call, and a deadline that stops it."""

import functools
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

import vi_jax as vi
from vi_jax._src.lbfgs import LbfgsStep
from vi_jax.auto import pathfinder_start as ps
from vi_jax.model import bijectors
from vi_jax.model.compiled_density import compiled_density
from vi_jax.model.target import flat_log_density

pf_module = importlib.import_module("vi_jax.solvers.multipath_pathfinder")

_RNG = np.random.default_rng(0)
_A = _RNG.normal(size=(3, 3))
COV = _A @ _A.T + 0.3 * np.eye(3)
MEAN = np.array([1., -2., 0.5])
PREC = np.linalg.inv(COV)
SPACE = bijectors.latent_space((3,))


def gaussian(x):
  d = x - MEAN
  return -0.5 * d @ PREC @ d


DENSITY = compiled_density(gaussian, SPACE)

_X = np.random.default_rng(1).normal(size=(200, 5))
_W = np.random.default_rng(2).normal(size=5)
_Y = (np.random.default_rng(3).uniform(size=200) <
      1. / (1. + np.exp(-_X @ _W))).astype(np.float32)


def logistic_regression(b):
  logits = jnp.asarray(_X, jnp.float32) @ b
  return (jnp.sum(_Y * logits - jnp.logaddexp(0., logits)) -
          0.5 * jnp.sum(b ** 2))


def test_gaussian_target_gives_its_mean_and_covariance():
  # 256 ELBO draws so that the best-ELBO iterate is one of the last (as in
  # tests/solvers/test_multipath_pathfinder.py); over keys 0-9 the loc was
  # within 6.2e-3 of the mean, the covariance's generalized eigenvalues in
  # [0.84, 1.21] and k-hat below 0.14. Identity covariance: eigenvalues of
  # COV^-1, [0.2, 3.4]: far outside.
  r = ps.pathfinder_start(DENSITY, jax.random.key(0), num_elbo_draws=256)
  assert r.loc.shape == (3,) and r.scale_tril.shape == (3, 3)
  assert r.elbo.shape == (4,) and not r.out_of_time
  sd = np.sqrt(np.diag(COV))
  np.testing.assert_allclose(r.loc, MEAN, atol=0.01 * sd.min())
  eig = scipy.linalg.eigh(r.scale_tril @ r.scale_tril.T, COV,
                          eigvals_only=True)
  assert 0.8 < eig.min() and eig.max() < 1.25, eig
  np.testing.assert_array_equal(np.triu(r.scale_tril, 1), 0.)
  assert r.k_hat < 0.5
  log_z = 0.5 * np.linalg.slogdet(2 * np.pi * COV)[1]
  assert np.all(log_z - 0.3 < r.elbo) and np.all(r.elbo < log_z + 0.2)
  # Density evaluations: 256 per iterate after the start + 4 x 1000.
  assert (r.num_density_evals - 4000) % 256 == 0
  assert 4 * 2 <= r.num_grad_evals < 4 * 100


def _fake_lbfgs_step(fn, solver, x, value, grad, opt_state):
  """The next recorded iterate, passed in as `opt_state = (x, grad)`."""
  del fn, solver, x, grad
  return LbfgsStep(opt_state[0], value, opt_state[1], opt_state,
                   jnp.bool_(True), jnp.ones((), jnp.int32))


def _replay_step(path, key, history_size, num_elbo_draws):
  """Each iterate's Gaussian and ELBO from `multipath_pathfinder._step`
  itself, its L-BFGS step replaced by the recorded iterates."""
  dim = path.x.shape[1]
  empty = jnp.zeros((history_size, dim))
  gaussian0 = pf_module._Gaussian(jnp.asarray(path.x[0]), jnp.ones(dim),
                                  jnp.zeros((dim, 2 * history_size)),
                                  jnp.zeros((2 * history_size,) * 2))
  state = pf_module._PathState(
      x=jnp.asarray(path.x[0]), value=jnp.zeros(()),
      grad=jnp.asarray(path.grad[0]), opt_state=(empty[0], empty[0]),
      alpha=jnp.ones(dim), s=empty, z=empty,
      filled=jnp.zeros(history_size, bool), iteration=jnp.zeros((), jnp.int32),
      done=jnp.bool_(False), num_evals=jnp.zeros((), jnp.int32),
      best_elbo=jnp.asarray(-jnp.inf), best=gaussian0)
  step = jax.jit(functools.partial(
      pf_module._step, flat_log_density(gaussian, SPACE), None,
      num_elbo_draws, 1e-5, 1e-8, 1000, key))
  gaussians, elbos = [], []
  for i in range(1, path.x.shape[0]):
    # best_elbo = -inf: the step's Gaussian becomes `best`.
    state = step(state._replace(
        opt_state=(jnp.asarray(path.x[i]), jnp.asarray(path.grad[i])),
        best_elbo=jnp.asarray(-jnp.inf)))
    gaussians.append(state.best)
    elbos.append(state.best_elbo)
  return gaussians, np.asarray(elbos)


def test_iterate_gaussians_equal_those_of_the_in_program_step(monkeypatch):
  monkeypatch.setattr(pf_module, "lbfgs_step", _fake_lbfgs_step)
  options = dict(maxcor=3, maxiter=1000, maxls=20, ftol=1e-7, gtol=1e-8)
  path = ps._lbfgs_path(DENSITY, np.array([2., 1., -1.]), options, math.inf)
  n = path.x.shape[0] - 1
  assert n > 3 + 2  # more iterates than the history holds
  key = jax.random.key(5)
  ours, elbo = ps._path_elbos(DENSITY, path, key, 3, 16)
  theirs, their_elbo = _replay_step(path, key, 3, 16)
  for i in range(n):
    for a, b in zip(jax.tree_util.tree_leaves(ours),
                    jax.tree_util.tree_leaves(theirs[i])):
      np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(elbo, their_elbo, rtol=1e-5, atol=1e-5)


def test_agrees_with_vi_pathfinder_on_a_logistic_regression():
  # Over keys 0-5 the best ELBOs differed by at most 0.044 and the locs by
  # at most 0.28 posterior sd (the paths' line searches differ).
  density = compiled_density(logistic_regression,
                             bijectors.latent_space((5,)))
  for seed in (0, 4):
    ours = ps.pathfinder_start(density, jax.random.key(seed))
    theirs = vi.pathfinder(logistic_regression, (5,),
                           key=jax.random.key(seed))
    assert abs(ours.elbo.max() - float(jnp.max(theirs.elbo))) < 0.1
    cov = np.asarray(theirs.scale_tril @ theirs.scale_tril.T)
    np.testing.assert_array_less(
        np.abs(ours.loc - np.asarray(theirs.loc)), 0.5 * np.sqrt(np.diag(cov)))
    assert ours.k_hat < 0.7 and np.all(np.isfinite(ours.elbo))


def test_a_second_call_compiles_nothing(count_compiles):
  ps.pathfinder_start(DENSITY, jax.random.key(0), num_draws=300)
  with count_compiles() as compiles:
    r = ps.pathfinder_start(DENSITY, jax.random.key(1), num_draws=300)
  assert not compiles
  assert np.all(np.isfinite(r.elbo))


def test_a_passed_deadline_stops_after_the_first_iteration():
  r = ps.pathfinder_start(DENSITY, jax.random.key(0), num_elbo_draws=16,
                          num_draws=200, deadline=0.)
  assert r.out_of_time
  # One iteration of the first path; the others not run.
  assert r.num_density_evals == 16 + 200
  assert np.isfinite(r.elbo[0]) and np.all(r.elbo[1:] == -np.inf)
  assert 2 <= r.num_grad_evals <= 2 + 20
  assert np.all(np.isfinite(r.loc)) and np.all(np.isfinite(r.scale_tril))
