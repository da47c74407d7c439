"""The compiled programs of one `vi.auto_fit` ladder stage, and the host loop
that runs its fits in chunks under a time budget.

A stage fits `num_restarts` (R) copies of one whitened family, vmapped: DADVI
solves (L-BFGS on fixed draws, `vi_jax.solvers.sample_average`) for the
Gaussian families, Adam at a fixed budget for the flow. Three programs serve a
stage, each compiled once per target, family and settings (DADVI's start and
advance also per number of fixed draws) and cached (`vi_jax._src.compile_cache`):

- start: `(loc, scale_tril, params0 [R], fit_keys [R]) -> state [R]`;
- advance: `(loc, scale_tril, state [R], fit_keys [R], stop_at) -> state [R]`,
  the fits' iterations (one `lax.while_loop` each) until done or `stop_at`
  iterations in all: the host calls it in chunks, sized from the time the
  last chunk took, and stops calling at the deadline (a program cannot be
  interrupted, and a host callback inside one would keep JAX's persistent
  compilation cache from storing it);
- evaluate: `(loc, scale_tril, params [R], eval_key) -> (elbo [R], k_hat [R],
  mean_gap, sd_gap)`: PSIS k-hat, ELBO and the PSIS-corrected moments' agreement
  of the fits, from `config.num_draws` draws (the same draws for every fit).
"""

import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vi_jax._src import compile_cache
from vi_jax._src import time_budget
from vi_jax._src.compile_cache import jit_once
from vi_jax._src.types import Array, Params
from vi_jax.auto import verdict
from vi_jax.criticism import diagnostics
from vi_jax.model.target import batched_target
from vi_jax.model.target import traced_once
from vi_jax.objectives.losses import negative_elbo
from vi_jax.solvers import sample_average
from vi_jax.surrogates import whitening

__all__ = ["FLOW_LEARNING_RATE", "FLOW_SAMPLE_SIZE", "EVAL_BATCH", "FitOutcome",
           "evaluate", "fit", "init_params", "log_weights", "whitened"]

FLOW_LEARNING_RATE = 5e-3  # the flow's peak Adam step size (whitened space)
FLOW_SAMPLE_SIZE = 8  # draws per Adam step of the flow
EVAL_BATCH = 2048  # draws of the target evaluated at once in a verdict
_FIRST_CHUNK = 1  # iterations of the first call under a deadline (it compiles)


def whitened(rung, config, space, loc, scale_tril):
  """The rung's family over `space`, whitened by `loc`, `scale_tril`."""
  kwargs = dict(rung.kwargs)
  if config.dtype is not None:
    kwargs["dtype"] = config.dtype
  return whitening.whiten(rung.make, space, None, loc=loc,
                          scale_tril=scale_tril, **kwargs)


def _in_batches(log_p, z):
  """`log_p(z)` over `[n, ...]` draws, `EVAL_BATCH` at a time (bounded
  memory: a target's intermediates grow with the draws it sees at once)."""
  one = lambda zi: log_p(jax.tree_util.tree_map(lambda x: x[None], zi))[0]
  return jax.lax.map(one, z, batch_size=EVAL_BATCH)


def log_weights(log_p, surrogate, num_draws, params, key):
  """`num_draws` draws of q and their log weights `log p - log q` (NaN ->
  -inf: a draw where the target is undefined has no weight)."""
  z, log_q = surrogate.sample_and_log_prob(params, key, num_draws)
  log_w = _in_batches(log_p, z) - log_q
  return z, jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)


def evaluate_one(log_p, space, surrogate, num_draws, params, eval_key):
  """`(elbo, k_hat, mean [dim], sd [dim])` of one fit from `num_draws` draws.

  The moments are PSIS-corrected (what `AutoFitResult.sample` returns) and of
  the flat unconstrained coordinates. The same `eval_key` serves every fit, so
  that differences between fits are not Monte Carlo noise of these draws
  (common random numbers).
  """
  z, log_w = log_weights(log_p, surrogate, num_draws, params, eval_key)
  smoothed = diagnostics.psis(log_w)
  u, _ = space.inverse_and_log_det(z)
  mean, var = diagnostics.weighted_moments(u, smoothed.log_weights)
  return jnp.mean(log_w), smoothed.pareto_k, mean, jnp.sqrt(var)


class _AdamState(NamedTuple):
  """One flow fit by Adam: `config.flow_steps` steps of `FLOW_SAMPLE_SIZE`."""
  params: Params
  opt_state: Any
  keys: Array  # [flow_steps] the step keys (split once, as one scan would)
  iteration: Array  # shape=(), int32: steps taken
  done: Array  # shape=(), bool


def _adam(config) -> optax.GradientTransformation:
  """Adam with a warmup-cosine schedule (peak `FLOW_LEARNING_RATE`, decayed to
  1% of it) over `config.flow_steps` steps: in whitened coordinates the
  target is scaled close to N(0, I), so one schedule serves every target."""
  steps = config.flow_steps
  return optax.adam(optax.warmup_cosine_decay_schedule(
      0., FLOW_LEARNING_RATE, max(1, steps // 20), steps,
      FLOW_LEARNING_RATE / 100))


def _adam_advance(config, target_log_prob_fn, surrogate, st: _AdamState,
                  stop_at) -> _AdamState:
  optimizer, loss_fn = _adam(config), negative_elbo()
  grad = jax.grad(lambda p, k: loss_fn(target_log_prob_fn, surrogate, p, k,
                                       FLOW_SAMPLE_SIZE))

  def step(st):
    updates, opt_state = optimizer.update(
        grad(st.params, st.keys[st.iteration]), st.opt_state, st.params)
    return st._replace(params=optax.apply_updates(st.params, updates),
                       opt_state=opt_state, iteration=st.iteration + 1,
                       done=st.iteration + 1 >= config.flow_steps)

  return jax.lax.while_loop(lambda s: ~s.done & (s.iteration < stop_at),
                            step, st)


def _start_program(target_log_prob_fn, space, rung, config, num_draws):
  target_log_prob_fn = traced_once(target_log_prob_fn)

  def one(surrogate, p0, key):
    if rung.fitter == "adam":
      return _AdamState(p0, _adam(config).init(p0),
                        jax.random.split(key, config.flow_steps),
                        jnp.zeros((), jnp.int32),
                        jnp.asarray(config.flow_steps < 1))
    return sample_average.solve_start(
        target_log_prob_fn, surrogate, p0, key, num_draws=num_draws,
        max_iterations=config.max_iterations)

  def run(loc, scale_tril, params0, fit_keys):
    surrogate = whitened(rung, config, space, loc, scale_tril)
    state = jax.vmap(lambda p, k: one(surrogate, p, k))(params0, fit_keys)
    # Strongly typed, as `advance` returns it: a weakly typed leaf would make
    # the second chunk's call trace and compile `advance` again.
    return jax.tree_util.tree_map(
        lambda x: jax.lax.convert_element_type(x, x.dtype), state)

  return jit_once(run)


def _advance_program(target_log_prob_fn, space, rung, config, num_draws):
  target_log_prob_fn = traced_once(target_log_prob_fn)

  def one(surrogate, st, key, stop_at):
    if rung.fitter == "adam":
      return _adam_advance(config, target_log_prob_fn, surrogate, st, stop_at)
    return sample_average.solve_advance(
        target_log_prob_fn, surrogate, st, key, num_draws=num_draws,
        max_iterations=config.max_iterations, stop_at=stop_at)

  def run(loc, scale_tril, state, fit_keys, stop_at):
    surrogate = whitened(rung, config, space, loc, scale_tril)
    return jax.vmap(lambda s, k: one(surrogate, s, k, stop_at))(state,
                                                                 fit_keys)

  return jit_once(run)


def _evaluate_program(target_log_prob_fn, space, rung, config):
  log_p = batched_target(traced_once(target_log_prob_fn))

  def run(loc, scale_tril, params, eval_key):
    surrogate = whitened(rung, config, space, loc, scale_tril)
    elbo, k_hat, mean, sd = jax.vmap(lambda p: evaluate_one(
        log_p, space, surrogate, config.num_draws, p, eval_key))(params)
    return (elbo, k_hat) + verdict.agreement(mean, sd)

  return jit_once(run)


def _init_program(space, rung, config):
  """The jitted `(loc, scale_tril, fit_keys [R]) -> params [R]`: the
  whitened family's initial params, one per restart (one small program in
  place of the many small ones its ops would compile one by one). It does
  not call the target, so targets share it."""

  def run(loc, scale_tril, fit_keys):
    surrogate = whitened(rung, config, space, loc, scale_tril)
    return jax.vmap(lambda k: surrogate.init(jax.random.fold_in(k, 1)))(
        fit_keys)

  return jit_once(run)


def init_params(space, rung, config, loc, scale_tril, fit_keys) -> Params:
  """The R fits' initial params (`[R]` leading axis)."""
  return compile_cache.program(_init_program, space, rung, config)(
      loc, scale_tril, fit_keys)


class FitOutcome(NamedTuple):
  """The R fits of one stage as the host loop left them."""
  params: Params  # [R]
  num_grad_evals: int  # target-gradient evaluations, all fits
  iterations: int  # iterations (L-BFGS) or steps (Adam) of the longest fit
  max_iterations: int  # the most a fit would take
  out_of_time: bool  # stopped at the deadline before every fit was done


def _next_stop(done_at: int, per_iteration: float, left: float,
               limit: int) -> int:
  """The iteration count the next chunk stops at: all that is left without a
  deadline; else, after a first short chunk, as many as half the time left
  allows at the last chunk's seconds per iteration."""
  if math.isinf(left):
    return limit
  if done_at == 0 or per_iteration <= 0.:
    return min(limit, done_at + _FIRST_CHUNK)
  return min(limit, done_at + max(1, int(0.5 * left / per_iteration)))


def fit(target_log_prob_fn, space, rung, config, num_draws, loc, scale_tril,
        params0, fit_keys, at: float) -> FitOutcome:
  """Runs the stage's R fits from `params0`, chunk by chunk, until they are
  done or the deadline `at` (`vi_jax._src.time_budget`) has passed.

  Args:
    target_log_prob_fn: the target of one draw (TFP's calling convention).
    space: the `LatentSpace` of the latents.
    rung: the family (`stages.ladder`); its `fitter` is "dadvi" or "adam".
    config: the stage `Config` (max_iterations, flow_steps, dtype).
    num_draws: Python int, DADVI's fixed draws (unused by Adam).
    loc, scale_tril: `[dim]`, `[dim, dim]`, the whitening Gaussian.
    params0: the R fits' initial params, leading `[R]`.
    fit_keys: `[R]` PRNG keys (DADVI's fixed draws, Adam's steps).
    at: Python float deadline; `math.inf` runs each fit to its end in one
      call.

  Returns:
    A `FitOutcome`; `out_of_time` True when the deadline stopped a fit that
    was not done.

  References:
    Giordano, Ingram, Broderick (2024), DADVI; optax's adam.
  """
  args = (target_log_prob_fn, space, rung, config, num_draws)
  state = compile_cache.program(_start_program, *args)(loc, scale_tril,
                                                       params0, fit_keys)
  advance = compile_cache.program(_advance_program, *args)
  limit = config.flow_steps if rung.fitter == "adam" else config.max_iterations
  done_at, per_iteration = 0, 0.
  while True:
    left = time_budget.seconds_left(at)
    if np.all(np.asarray(state.done)) or left <= 0 or done_at >= limit:
      break
    stop = _next_stop(done_at, per_iteration, left, limit)
    t0 = time.perf_counter()
    state = jax.block_until_ready(advance(loc, scale_tril, state, fit_keys,
                                          np.int32(stop)))
    per_iteration = (time.perf_counter() - t0) / max(1, stop - done_at)
    done_at = stop
  iteration = np.asarray(state.iteration)
  if rung.fitter == "adam":
    evals, params = int(iteration.sum()) * FLOW_SAMPLE_SIZE, state.params
  else:
    evals = int(np.asarray(state.num_evals).sum()) * num_draws
    params = state.x
  return FitOutcome(params, evals, int(iteration.max()), limit,
                    out_of_time=not np.all(np.asarray(state.done)))


def evaluate(target_log_prob_fn, space, rung, config, loc, scale_tril, params,
             eval_key) -> tuple:
  """`(elbo [R], k_hat [R], mean_gap, sd_gap)` of the R fits (params with a
  leading `[R]`), from `config.num_draws` draws each with the same
  `eval_key`; the gaps as `vi_jax.auto.verdict.agreement` (Yao et al. 2018
  for k-hat as a VI diagnostic)."""
  return compile_cache.program(_evaluate_program, target_log_prob_fn, space,
                               rung, config)(loc, scale_tril, params, eval_key)
