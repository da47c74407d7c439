"""One optax L-BFGS iteration with its value, gradient and line-search cost.

Shared by the MAP search of `vi.laplace` and the paths of `vi.pathfinder`,
which both run `optax.lbfgs` (zoom line search) in a `lax.while_loop` and
need, after each iteration, the new point, its value and gradient (kept in
optax's state), whether they are finite, and how many evaluations the line
search took.
"""

from typing import Callable, NamedTuple

import jax.numpy as jnp
import optax

from vi_jax._src.types import Array

__all__ = ["LbfgsStep", "lbfgs_step"]


class LbfgsStep(NamedTuple):
  x: Array  # [dim] the new point
  value: Array  # shape=(), the minimized function at x
  grad: Array  # [dim] its gradient at x
  opt_state: optax.OptState
  finite: Array  # shape=(), bool: value, grad and x are all finite
  num_evals: Array  # shape=(), int32: line-search evaluations of this step


def lbfgs_step(neg: Callable[[Array], Array], solver, x, value, grad,
               opt_state) -> LbfgsStep:
  """One `optax.lbfgs` update of `x` minimizing `neg` (value/grad reused)."""
  updates, opt_state = solver.update(grad, opt_state, x, value=value,
                                     grad=grad, value_fn=neg)
  x = x + updates
  value = optax.tree_utils.tree_get(opt_state, "value")
  grad = optax.tree_utils.tree_get(opt_state, "grad")
  info = optax.tree_utils.tree_get(opt_state, "info")
  finite = (jnp.isfinite(value) & jnp.all(jnp.isfinite(grad)) &
            jnp.all(jnp.isfinite(x)))
  return LbfgsStep(x, value, grad, opt_state, finite,
                   jnp.asarray(info.num_linesearch_steps, jnp.int32))
