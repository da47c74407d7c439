"""The fixed-draw L-BFGS solve of DADVI: the sample-average approximation
(SAA) of the -ELBO at fixed base draws, minimized by the L-BFGS iteration of
`vi_jax._src.lbfgs` with scipy L-BFGS-B's stopping rules.

`solve_start` and `solve_advance` split one solve so that a host loop can run
its iterations in chunks (to check a time budget between them: `vi.auto_fit`);
`fixed_draw_solve` runs it whole inside a caller's program; `vi.dadvi` grows
the draws around it.

References:
  Giordano, Ingram, Broderick (2024), Black box variational inference with a
  deterministic objective: faster, more accurate, and even more black box,
  JMLR 25(18). Byrd, Lu, Nocedal, Zhu (1995), L-BFGS-B, SIAM J. Sci. Comput.
"""

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from vi_jax._src.lbfgs import (keep_finite, lbfgs_start, lbfgs_step,
                               relative_decrease)
from vi_jax._src.types import Array, Params, PRNGKey, TargetLogProbFn
from vi_jax.objectives.losses import negative_elbo

__all__ = ["SolveState", "default_ftol", "fixed_draw_solve", "objective",
           "solve_advance", "solve_start"]

_SCIPY_FTOL = 2.220446049250313e-09  # scipy L-BFGS-B: factr 1e7 x float64 eps


def objective(target_log_prob_fn, surrogate, num_draws, key):
  """`params -> -ELBO` at the `num_draws` fixed draws of `key` (the SAA)."""
  loss_fn = negative_elbo()
  return lambda params: loss_fn(target_log_prob_fn, surrogate, params, key,
                                num_draws)


class SolveState(NamedTuple):
  """Where one fixed-draw L-BFGS solve stands (`solve_start`, `solve_advance`)."""
  x: Params            # the current params
  value: Array         # shape=(), the SAA objective at x
  grad: Params         # its gradient
  opt_state: optax.OptState
  iteration: Array     # shape=(), int32
  done: Array          # shape=(), bool
  num_evals: Array     # shape=(), int32: value-and-gradient calls
  converged: Array     # shape=(), bool: the last step met gtol or ftol


def _solve_step(fn, solver, max_iterations, gtol, ftol,
                st: SolveState) -> SolveState:
  """One L-BFGS iteration and scipy L-BFGS-B's stopping rules.

  Converged when the step is finite and its gradient's largest entry is at
  most `gtol` or its `relative_decrease` at most `ftol` (Byrd, Lu, Nocedal &
  Zhu 1995); done also at a non-finite step (not taken) or `max_iterations`.
  """
  step = lbfgs_step(fn, solver, st.x, st.value, st.grad, st.opt_state)
  small_grad = optax.tree.norm(step.grad, ord=jnp.inf) <= gtol
  small_decrease = relative_decrease(st.value, step.value) <= ftol
  converged = step.finite & (small_grad | small_decrease)
  iteration = st.iteration + 1
  done = ~step.finite | converged | (iteration >= max_iterations)
  new = keep_finite(step, st.x, st.value, st.grad, st.opt_state)
  return SolveState(*new, iteration=iteration, done=done,
                     num_evals=st.num_evals + step.num_evals,
                     converged=converged)


def solve_start(target_log_prob_fn, surrogate, params: Params, key: PRNGKey,
                *, num_draws: int, max_iterations: int) -> SolveState:
  """The state of a fixed-draw L-BFGS solve at `params`, traceable.

  Args:
    target_log_prob_fn: as for `dadvi`.
    surrogate: a `vi_jax.surrogates.Surrogate`.
    params: the starting params.
    key: the PRNG key of the fixed draws.
    num_draws: Python int, fixed draws.
    max_iterations: Python int (a solve with none is done at once).

  Returns:
    A `SolveState`: the objective's value and gradient at `params` (one
    evaluation counted), iteration 0.
  """
  fn = objective(target_log_prob_fn, surrogate, num_draws, key)
  start = lbfgs_start(fn, optax.lbfgs(), params)
  return SolveState(*start[:4], iteration=jnp.zeros((), jnp.int32),
                    done=~start.finite | (max_iterations < 1),
                    num_evals=start.num_evals, converged=jnp.bool_(False))


def solve_advance(target_log_prob_fn, surrogate, state: SolveState,
                  key: PRNGKey, *, num_draws: int, max_iterations: int,
                  stop_at, gtol: float = 1e-6,
                  ftol: Optional[float] = None) -> SolveState:
  """L-BFGS iterations of a fixed-draw solve until it is done or has taken
  `stop_at` iterations in all, traceable (jit, vmap).

  A host loop can call it with a growing `stop_at` (an array argument: one
  compiled program) to check a time budget between calls; the iterations
  are those of one `lax.while_loop` to `max_iterations`.

  Args:
    target_log_prob_fn, surrogate, key, num_draws: as for `solve_start`.
    state: a `SolveState` from `solve_start` or an earlier call.
    max_iterations: Python int, the solve's iterations at most.
    stop_at: int scalar (Python or `[]` array), iterations in all to stop at.
    gtol: gradient sup-norm below which it stops.
    ftol: relative decrease below which it stops (default: scipy's, or the
      dtype's eps when larger).

  Returns:
    The `SolveState` after these iterations.
  """
  if ftol is None:
    ftol = default_ftol(state.x)
  fn = objective(target_log_prob_fn, surrogate, num_draws, key)
  step = functools.partial(_solve_step, fn, optax.lbfgs(),
                           max_iterations, gtol, ftol)
  return jax.lax.while_loop(
      lambda st: ~st.done & (st.iteration < stop_at), step, state)


def default_ftol(params) -> float:
  """scipy L-BFGS-B's default relative-decrease tolerance, or the params'
  dtype's eps when larger (float32)."""
  eps = float(jnp.finfo(jax.tree_util.tree_leaves(params)[0].dtype).eps)
  return max(eps, _SCIPY_FTOL)


def fixed_draw_solve(target_log_prob_fn: TargetLogProbFn, surrogate,
                     params: Params, key: PRNGKey, *, num_draws: int,
                     max_iterations: int = 500, gtol: float = 1e-6,
                     ftol: Optional[float] = None) -> tuple[Params, Array]:
  """One DADVI solve at `num_draws` fixed draws, traceable (jit, vmap).

  The solver of `dadvi` (L-BFGS on the -ELBO at the fixed draws of `key`,
  one `lax.while_loop`) without its host-side checks and growing of the
  draws, for use inside a caller's compiled program.

  Args:
    target_log_prob_fn: as for `dadvi`.
    surrogate: a `vi_jax.surrogates.Surrogate`.
    params: the starting params.
    key: the PRNG key of the fixed draws.
    num_draws: Python int, fixed draws (>= `min_fixed_draws`; not checked).
    max_iterations: Python int, L-BFGS iterations at most.
    gtol: gradient sup-norm below which it stops.
    ftol: relative decrease below which it stops (default: scipy's, or the
      dtype's eps when larger).

  Returns:
    `(params, num_grad_evals)`: the solution and the target-gradient
    evaluations (objective evaluations x `num_draws`), an int32 scalar.
  """
  state = solve_start(target_log_prob_fn, surrogate, params, key,
                      num_draws=num_draws, max_iterations=max_iterations)
  state = solve_advance(target_log_prob_fn, surrogate, state, key,
                        num_draws=num_draws, max_iterations=max_iterations,
                        stop_at=max_iterations, gtol=gtol, ftol=ftol)
  return state.x, num_draws * state.num_evals
