"""One optax L-BFGS iteration with its value, gradient and line-search cost.

Shared by the MAP search of `vi.laplace`, the paths of `vi.pathfinder` and the
fixed-draw solves of `vi.dadvi`, which all run `optax.lbfgs` (zoom line
search) in a `lax.while_loop` the same way:

    start = lbfgs_start(fn, solver, x0)        # 1 value-and-gradient call
    while not done:
      step = lbfgs_step(fn, solver, x, value, grad, opt_state)
      done = ~step.finite | <the caller's stopping rule> | <max iterations>
      x, value, grad, opt_state = keep_finite(step, x, value, grad, opt_state)
      num_evals += step.num_evals

`x` is a flat array `[dim]` (Laplace, Pathfinder) or any pytree of arrays
(DADVI's surrogate params). `relative_decrease` is the decrease measure of
scipy's L-BFGS-B `ftol` rule, which the callers' stopping rules compare with
their tolerances.

References:
  Nocedal & Wright (2006), "Numerical Optimization", 2nd ed., Alg. 7.5
  (L-BFGS) and Algs. 3.5-3.6 (zoom line search); Byrd, Lu, Nocedal & Zhu
  (1995), "A limited memory algorithm for bound constrained optimization",
  SIAM J. Sci. Comput. 16(5) (L-BFGS-B and its stopping rules).
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vi_jax._src.types import Array, PyTree

__all__ = ["LbfgsStep", "keep_finite", "lbfgs_start", "lbfgs_step",
           "relative_decrease"]


class LbfgsStep(NamedTuple):
  """A point of an L-BFGS run: after `lbfgs_start` or one `lbfgs_step`."""
  x: PyTree  # [dim] (or a pytree of arrays): the new point
  value: Array  # shape=(), the minimized function at x
  grad: PyTree  # like x: its gradient at x
  opt_state: optax.OptState
  finite: Array  # shape=(), bool: value, grad and x are all finite
  num_evals: Array  # shape=(), int32: value-and-gradient evaluations taken


def _all_finite(*trees) -> Array:
  """shape=() bool: every entry of every leaf of `trees` is finite."""
  return functools.reduce(
      jnp.logical_and,
      [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(trees)],
      jnp.bool_(True))


def lbfgs_start(fn: Callable[[PyTree], Array], solver, x) -> LbfgsStep:
  """The start of an L-BFGS run: `fn`'s value and gradient at `x`.

  Args:
    fn: the function to minimize, `x -> shape=()` float, differentiable.
    solver: an `optax.lbfgs(...)` (any zoom line search).
    x: `[dim]` float, or a pytree of float arrays: the start.

  Returns:
    `LbfgsStep(x, fn(x), grad fn(x), solver.init(x), finite, num_evals=1)`.
  """
  value, grad = jax.value_and_grad(fn)(x)
  return LbfgsStep(x, value, grad, solver.init(x), _all_finite(x, value, grad),
                   jnp.ones((), jnp.int32))


def lbfgs_step(fn: Callable[[PyTree], Array], solver, x, value, grad,
               opt_state) -> LbfgsStep:
  """One `optax.lbfgs` update of `x` minimizing `fn` (value/grad reused).

  The new point's value and gradient are those the line search computed
  there (kept in `opt_state`), so an iteration costs only its line-search
  evaluations. Traceable: composes with `jax.jit` and `jax.vmap`.

  Args:
    fn: the function to minimize, `x -> shape=()` float, differentiable.
    solver: the `optax.lbfgs(...)` that made `opt_state`.
    x: `[dim]` float, or a pytree of float arrays: the current point.
    value: shape=(), `fn(x)`.
    grad: like `x`, the gradient of `fn` at `x`.
    opt_state: the solver's state at `x` (`solver.init` at the start).

  Returns:
    An `LbfgsStep`; `num_evals` counts the line search's value-and-gradient
    evaluations of `fn` in this step.
  """
  updates, opt_state = solver.update(grad, opt_state, x, value=value,
                                     grad=grad, value_fn=fn)
  x = optax.apply_updates(x, updates)
  value = optax.tree_utils.tree_get(opt_state, "value")
  grad = optax.tree_utils.tree_get(opt_state, "grad")
  info = optax.tree_utils.tree_get(opt_state, "info")
  return LbfgsStep(x, value, grad, opt_state, _all_finite(x, value, grad),
                   jnp.asarray(info.num_linesearch_steps, jnp.int32))


def keep_finite(step: LbfgsStep, x, value, grad, opt_state) -> tuple:
  """`(x, value, grad, opt_state)` of `step` if it is finite, else the given
  previous ones (a non-finite step is not taken)."""
  return jax.tree_util.tree_map(
      lambda new, old: jnp.where(step.finite, new, old),
      (step.x, step.value, step.grad, step.opt_state),
      (x, value, grad, opt_state))


def relative_decrease(old_value, new_value) -> Array:
  """shape=(): `(old - new) / max(|old|, |new|, 1)`, scipy L-BFGS-B's
  measure of an iteration's progress (it stops when this is <= `ftol`;
  negative for an increase)."""
  scale = jnp.maximum(jnp.maximum(jnp.abs(old_value), jnp.abs(new_value)), 1.)
  return (old_value - new_value) / scale
