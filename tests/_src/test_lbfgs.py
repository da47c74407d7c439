"""Tests of the L-BFGS iteration of vi_jax._src.lbfgs against closed forms and scipy.

Each test iterates `lbfgs_step` to convergence (in float64, inside one jitted
`lax.while_loop`, as the solvers do) and compares the end point with a known
minimizer or with scipy's L-BFGS-B, or checks what a step reports (its
evaluation count, its finiteness) against an independent count.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize

from vi_jax._src.lbfgs import (LbfgsStep, keep_finite, lbfgs_start, lbfgs_step,
                               relative_decrease)


@pytest.fixture(autouse=True)
def _x64():
  with jax.enable_x64(True):
    yield


def _minimize(fn, x0, max_iterations=500, gtol=1e-10):
  """`(x, value, grad, iterations, num_evals)` of L-BFGS on `fn` from `x0`.

  Stops at a gradient sup-norm <= gtol, a step that does not decrease `fn`
  or is not finite, or `max_iterations`; traceable (jit, vmap).
  """
  solver = optax.lbfgs()

  def body(carry):
    st, it, _ = carry
    step = lbfgs_step(fn, solver, st.x, st.value, st.grad, st.opt_state)
    done = (~step.finite | (relative_decrease(st.value, step.value) <= 0.) |
            (optax.tree.norm(step.grad, ord=jnp.inf) <= gtol))
    new = keep_finite(step, st.x, st.value, st.grad, st.opt_state)
    st = LbfgsStep(*new, finite=step.finite,
                   num_evals=st.num_evals + step.num_evals)
    return st, it + 1, done

  start = lbfgs_start(fn, solver, x0)
  st, it, _ = jax.lax.while_loop(
      lambda c: ~c[2] & (c[1] < max_iterations), body,
      (start, jnp.zeros((), jnp.int32), ~start.finite))
  return st.x, st.value, st.grad, it, st.num_evals


def _ill_conditioned_quadratic(dim=8, condition=1e4):
  """`(A [dim, dim], b [dim])`: A = Q diag(logspace(0, log10 condition)) Q^T."""
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  a = q @ np.diag(np.logspace(0., np.log10(condition), dim)) @ q.T
  return (a + a.T) / 2, rng.normal(size=dim)


def _rosenbrock(x):
  return jnp.sum(100. * (x[1:] - x[:-1] ** 2) ** 2 + (1. - x[:-1]) ** 2)


def test_quadratic_reaches_the_closed_form_minimizer():
  # 0.5 x^T A x - b^T x, cond(A) = 1e4: minimizer A^-1 b, minimum
  # -0.5 b^T A^-1 b.
  a, b = _ill_conditioned_quadratic()
  fn = lambda x: 0.5 * x @ a @ x - b @ x
  x, value, _, it, _ = jax.jit(_minimize, static_argnums=0)(fn, jnp.zeros(8))
  exact = np.linalg.solve(a, b)
  np.testing.assert_allclose(x, exact, rtol=0, atol=1e-5)
  np.testing.assert_allclose(value, -0.5 * b @ exact, rtol=1e-10)
  assert 0 < int(it) < 500


def test_rosenbrock_reaches_one_one():
  x, value, _, it, _ = jax.jit(_minimize, static_argnums=0)(
      _rosenbrock, jnp.array([-1.2, 1.]))
  np.testing.assert_allclose(x, [1., 1.], rtol=0, atol=1e-5)
  assert float(value) < 1e-10
  assert int(it) > 10  # the curved valley takes more than a few iterations


def test_num_evals_matches_a_counter_around_the_function():
  # Every value-and-gradient evaluation XLA runs, the line search's
  # included, bumps the counter once (a host callback in the forward pass).
  calls = []

  def counted(x):
    jax.debug.callback(lambda: calls.append(1))
    return _rosenbrock(x)

  _, _, _, it, num_evals = jax.jit(_minimize, static_argnums=0)(
      counted, jnp.array([-1.2, 1.]))
  jax.effects_barrier()
  assert int(num_evals) == len(calls)
  assert int(num_evals) > int(it) + 1  # the zoom took extra trials somewhere


def _logistic_nll(x, y):
  """Negative log-likelihood of logistic regression, `w -> sum_i log(1 + exp(
  -s_i x_i^T w))`, s_i = 2 y_i - 1 (x: [n, d], y: [n] in {0, 1})."""

  def nll(w):
    return jnp.sum(jax.nn.softplus(-(2. * y - 1.) * (x @ w)))

  return nll


def test_logistic_regression_agrees_with_scipy_lbfgsb():
  rng = np.random.default_rng(1)
  x = np.concatenate([np.ones((200, 1)), rng.normal(size=(200, 3))], axis=1)
  y = (rng.uniform(size=200) < 1 / (1 + np.exp(-x @ [0.5, 1., -2., 0.3])))
  nll = _logistic_nll(jnp.asarray(x), jnp.asarray(y, jnp.float64))
  w, value, _, _, _ = jax.jit(_minimize, static_argnums=0)(nll, jnp.zeros(4))
  value_and_grad = jax.jit(jax.value_and_grad(nll))
  ref = optimize.minimize(
      lambda v: tuple(np.asarray(t) for t in value_and_grad(v)), np.zeros(4),
      jac=True, method="L-BFGS-B",
      options=dict(gtol=1e-10, ftol=1e-15, maxiter=1000))
  assert ref.success
  np.testing.assert_allclose(w, ref.x, rtol=0, atol=1e-4)
  np.testing.assert_allclose(value, ref.fun, rtol=1e-8)


def _four_wells(x):
  """Four minima, near (+-1, +-1), of different depths (tilted by 0.2 x)."""
  return jnp.sum((x ** 2 - 1.) ** 2 + 0.2 * x * jnp.array([1., -0.5]))


def test_jit_and_vmap_over_starts_give_the_one_by_one_minima():
  starts = jnp.array([[-1.5, -1.5], [1.5, -0.7], [-0.6, 1.3], [0.9, 0.8],
                      [2., 2.]])
  one = jax.jit(functools.partial(_minimize, _four_wells))
  batched = jax.jit(jax.vmap(functools.partial(_minimize, _four_wells)))(
      starts)
  for i, x0 in enumerate(starts):
    alone = one(x0)
    for got, want in zip(batched, alone):
      np.testing.assert_allclose(got[i], want, rtol=1e-9, atol=1e-12)
  ends = np.round(np.asarray(batched[0]))
  assert len({tuple(e) for e in ends}) == 4  # the starts reach all four wells
  np.testing.assert_allclose(jax.vmap(jax.grad(_four_wells))(batched[0]), 0.,
                             atol=1e-9)


def test_pytree_point_takes_the_steps_of_its_flat_vector():
  # DADVI's params are a pytree: the iterates are those of the raveled
  # vector (optax's tree ops are sums over leaves).
  a, b = _ill_conditioned_quadratic(dim=5, condition=1e2)
  flat_fn = lambda x: 0.5 * x @ a @ x - b @ x
  tree_fn = lambda t: flat_fn(jnp.concatenate([t["u"], t["v"].ravel()]))
  run = jax.jit(_minimize, static_argnums=(0, 2))
  flat = run(flat_fn, jnp.zeros(5), 4)
  tree = run(tree_fn, {"u": jnp.zeros(1), "v": jnp.zeros((2, 2))}, 4)
  np.testing.assert_allclose(
      jnp.concatenate([tree[0]["u"], tree[0]["v"].ravel()]), flat[0],
      rtol=1e-12, atol=1e-14)
  assert int(tree[3]) == int(flat[3]) == 4 and int(tree[4]) == int(flat[4])


def test_start_and_step_report_non_finite_points():
  solver = optax.lbfgs()
  fn = lambda x: jnp.sum(jnp.log(x) - x)  # minimum of -(log x - x) at x = 1
  assert not bool(lbfgs_start(fn, solver, jnp.array([-1., 2.])).finite)
  start = lbfgs_start(lambda x: -fn(x), solver, jnp.array([0.5, 2.]))
  assert bool(start.finite) and int(start.num_evals) == 1
  step = lbfgs_step(lambda x: -fn(x), solver, *start[:4])
  assert bool(step.finite) and float(step.value) < float(start.value)
  bad = step._replace(finite=jnp.bool_(False))
  kept = keep_finite(bad, *start[:4])
  np.testing.assert_array_equal(kept[0], start.x)
  assert float(kept[1]) == float(start.value)
  moved = keep_finite(step, *start[:4])
  np.testing.assert_array_equal(moved[0], step.x)


@pytest.mark.parametrize("old, new, want", [
    (10., 9., 0.1), (-4., -8., 0.5), (0.5, 0.25, 0.25), (2., 3., -1. / 3.),
    (1e-3, 1e-3, 0.)])
def test_relative_decrease_is_scipys_measure(old, new, want):
  # (old - new) / max(|old|, |new|, 1), as scipy's L-BFGS-B ftol rule.
  assert float(relative_decrease(old, new)) == pytest.approx(want, abs=1e-15)
