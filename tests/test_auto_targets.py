"""Tests of benchmarks.auto_targets, benchmarks.auto_methods and the pieces of
benchmarks.auto_accuracy."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import auto_accuracy
from benchmarks import auto_methods
from benchmarks import auto_targets
from benchmarks import targets
import vi_jax as vi

# Targets whose identity transformation keeps the latents' leaf order, so the
# flat reference mean unflattens into a point of the latent space.
_SAME_ORDER = ("eight_schools", "irt", "ill_gaussian", "funnel", "banana",
               "lorenz", "german_credit", "breast_cancer")


def _reference_point(t):
  """The reference mean as a pytree of latents (leading [1])."""
  space = vi.bijectors.latent_space(t.event_shape, t.bijector)
  z = space.unflatten(jnp.asarray(t.ref_mean, t.dtype)[None])
  np.testing.assert_allclose(np.asarray(t.flatten_z(z))[0], t.ref_mean,
                             rtol=1e-6)  # the leaf order is the reference's
  return z


def _log_prob_at(t, z):
  one = jax.tree_util.tree_map(lambda x: x[0], z)
  return float(jax.jit(vi.target.call_target, static_argnums=0)(
      t.target_log_prob_fn, one))


@pytest.mark.parametrize("name", _SAME_ORDER)
def test_density_finite_at_reference_mean(name):
  t = auto_targets.get(name)
  assert t.ref_mean.shape == t.ref_std.shape == (t.dim,)
  assert np.all(t.ref_std > 0)
  assert math.isfinite(_log_prob_at(t, _reference_point(t)))


def test_brownian_reference_order_is_the_ground_truths():
  # latents (innovation, observation, x_0..x_29); reference dict sorted by key:
  # innovation_noise_scale, locs [30], observation_noise_scale.
  t = auto_targets.get("brownian")
  m = t.ref_mean
  z = type(t.event_shape)(*([m[0], m[31]] + list(m[1:31])))
  z = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32)[None], z)
  np.testing.assert_allclose(np.asarray(t.flatten_z(z))[0], m, rtol=1e-6)
  assert math.isfinite(_log_prob_at(t, z))


def test_stochastic_volatility_constrain_gives_centered_log_volatility():
  t = auto_targets.get("sv_small")
  u = jnp.zeros((2, t.dim))
  flat = np.asarray(t.constrain(u))
  assert flat.shape == (2, t.ref_mean.size) and np.all(np.isfinite(flat))
  assert math.isfinite(float(jax.jit(t.unconstrained_log_prob)(u[0])))


def test_lgcp_needs_x64_and_is_finite_at_reference_mean():
  if not jax.config.jax_enable_x64:
    with pytest.raises(RuntimeError, match="JAX_ENABLE_X64"):
      auto_targets.get("lgcp")
  with jax.enable_x64(True):
    t = auto_targets.get("lgcp")
    z = _reference_point(t)
    assert jax.tree_util.tree_leaves(z)[0].dtype == jnp.float64
    assert math.isfinite(_log_prob_at(t, z))


def test_german_credit_density_equals_inference_gyms():
  from inference_gym import using_jax as gym  # pylint: disable=g-import-not-at-top
  x, y = targets.german_credit_data()
  model = gym.targets.LogisticRegression(train_features=x, train_labels=y)
  t = auto_targets.get("german_credit")
  w = jax.random.normal(jax.random.key(0), (5, t.dim)) * 0.3
  ours = jax.vmap(t.target_log_prob_fn)(w)
  theirs = jax.vmap(model.unnormalized_log_prob)(w)
  # inference_gym's N(0, 1) prior keeps its normalizing constant.
  chex.assert_trees_all_close(ours - 0.5 * t.dim * np.log(2 * np.pi), theirs,
                              rtol=1e-5)


def _laplace(t, num_iters=100):
  """(mode, sd) of the Laplace approximation, by optax L-BFGS."""
  f = lambda u: -t.unconstrained_log_prob(u)
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(f)

  def step(carry, _):
    u, state = carry
    value, grad = value_and_grad(u, state=state)
    updates, state = solver.update(grad, state, u, value=value, grad=grad,
                                   value_fn=f)
    return (optax.apply_updates(u, updates), state), None

  u = jnp.zeros(t.dim)
  run = jax.jit(lambda u: jax.lax.scan(step, (u, solver.init(u)), None,
                                       num_iters)[0][0])
  u = run(u)
  cov = np.linalg.inv(np.asarray(jax.jit(jax.hessian(f))(u), np.float64))
  return np.asarray(u), np.sqrt(np.diag(cov))


def test_german_credit_labels_match_the_ground_truth():
  # With the labels flipped the mode is 25 reference sds away.
  t = auto_targets.get("german_credit")
  mode, sd = _laplace(t)
  assert np.max(np.abs(mode - t.ref_mean) / t.ref_std) < 0.6
  np.testing.assert_allclose(sd / t.ref_std, 1., atol=0.1)


def test_breast_cancer_reference_agrees_with_laplace():
  t = auto_targets.get("breast_cancer")
  mode, sd = _laplace(t)
  assert np.max(np.abs(mode - t.ref_mean) / t.ref_std) < LAPLACE_MEAN_TOL
  np.testing.assert_allclose(sd / t.ref_std, 1., atol=LAPLACE_SD_TOL)


# Laplace on this data: mode 0.34 sd from the NUTS mean, sd ratios 0.94-1.05.
LAPLACE_MEAN_TOL, LAPLACE_SD_TOL = 0.45, 0.1


def test_accuracy_on_reference_draws_and_shifted_draws():
  t = auto_targets.get("german_credit")
  draws = (t.ref_mean + t.ref_std *
           np.random.default_rng(0).standard_normal((4000, t.dim)))
  errors = auto_methods.accuracy(t, draws)
  assert auto_methods.passes(errors)
  shifted = draws + 0.2 * t.ref_std
  assert not auto_methods.passes(auto_methods.accuracy(t, shifted))
  assert not auto_methods.passes(auto_methods.accuracy(t, draws * 1.2))


def test_counting_counts_gradient_evaluations_only():
  counter = [0]
  f = auto_methods._counting(lambda u: -0.5 * jnp.sum(u**2), counter)  # pylint: disable=protected-access
  u = jnp.arange(3.)
  g = jax.jit(jax.grad(f))
  for _ in range(3):
    chex.assert_trees_all_close(g(u), -u)
  jax.jit(jax.vmap(f))(jnp.ones((4, 3))).block_until_ready()
  jax.effects_barrier()
  assert counter[0] == 3


def test_write_section_replaces_only_its_section(tmp_path):
  path = tmp_path / "RESULTS.md"
  path.write_text("# R\n\n## A\na\n\n" + auto_accuracy.SECTION +
                  "\nold\n\n## B\nb\n")
  auto_accuracy.write_section(auto_accuracy.SECTION + "\nnew\n", str(path))
  text = path.read_text()
  assert "old" not in text and "new" in text
  assert text.startswith("# R\n\n## A\na\n") and text.endswith("## B\nb\n")
