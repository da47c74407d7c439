"""One `vi.auto_fit` ladder stage run from the host over the compiled target.

A stage fits `num_restarts` (R) copies of one whitened family: DADVI solves
(scipy's L-BFGS-B on the -ELBO at fixed draws) for the Gaussian families,
Adam at a fixed budget for the flow. The target enters only through its
`CompiledDensity` (`vi_jax.model.compiled_density`: the log density and
gradient in the flat unconstrained coordinates, compiled once per target);
the stage's own programs never call it, so they compile in a fraction of a
second, once per family, dimension and settings, and are shared by every
target of that dimension:

- draws: `(loc, scale_tril, theta, key) -> (x [n, dim], log_q [n])`, the
  family's reparameterized draws in the unconstrained coordinates
  (`x = loc + scale_tril @ u`, u from the family), theta its flat params;
- gradient: `(loc, scale_tril, theta, key, g [n, dim]) -> [P]`, the -ELBO's
  gradient at those draws given the target's gradients `g` there (the chain
  rule through the draws: `-mean(x . g) + mean(log q)` differentiated with
  `g` held fixed);
- the flow's Adam step, which also makes the next step's draws;
- the verdict: PSIS k-hat, ELBO and PSIS-corrected moments of R fits.

The host runs the solvers between these calls and checks the deadline between
iterations (scipy's callback; each Adam step), so `max_time` can end a fit.

References:
  Giordano, Ingram, Broderick (2024), DADVI, JMLR 25(18) (fixed draws, a
  quasi-Newton solve: their code calls scipy.optimize). Byrd, Lu, Nocedal,
  Zhu (1995), L-BFGS-B. Kingma & Ba (2015), Adam. Yao, Vehtari, Simpson,
  Gelman (2018), "Yes, but did it work?" (k-hat as a VI diagnostic).
"""

import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from vi_jax._src import compile_cache
from vi_jax._src import time_budget
from vi_jax._src.compile_cache import host_jit
from vi_jax._src import rng
from vi_jax._src.rng import unrolled_threefry_keys
from vi_jax._src.types import Params
from vi_jax.auto import verdict
from vi_jax.criticism import diagnostics
from vi_jax.model.compiled_density import BATCH
from vi_jax.model.compiled_density import CompiledDensity
from vi_jax.solvers import sample_average
from vi_jax.surrogates import whitening

__all__ = ["FLOW_LEARNING_RATE", "FLOW_SAMPLE_SIZE", "FitOutcome", "evaluate",
           "fit", "fit_draws", "init_params", "judge_draws", "whitened"]

FLOW_LEARNING_RATE = 5e-3  # the flow's peak Adam step size (whitened space)
FLOW_SAMPLE_SIZE = 8  # draws per Adam step of the flow
DADVI_GTOL = 1e-6  # scipy L-BFGS-B's gtol of a DADVI solve (sup-norm)
_FIRST_CHUNK = 10  # Adam steps of the flow's first call under a deadline
_MAX_CHUNK_SECONDS = 2.  # the longest a later call is sized to run


def whitened(rung, config, space, loc, scale_tril):
  """The rung's family over `space`, whitened by `loc`, `scale_tril`."""
  return whitening.whiten(rung.make, space, None, loc=loc,
                          scale_tril=scale_tril, **_family_kwargs(rung, config))


def _family_kwargs(rung, config) -> dict:
  kwargs = dict(rung.kwargs)
  if config.dtype is not None:
    kwargs["dtype"] = config.dtype
  return kwargs


class _Family(NamedTuple):
  """What a program of a rung depends on (hashable): the Laplace stage's
  full-rank Gaussian and the full_rank rung share their programs."""
  make: Any
  kwargs: tuple


def _family(rung) -> _Family:
  return _Family(rung.make, rung.kwargs)


def _inner(rung, config, dim):
  """The family over the whitened coordinates u (`[dim]`), as `whiten`
  builds it (an untrained Gaussian is exactly the whitening Gaussian)."""
  return whitening.whiten(rung.make, (dim,), None, loc=np.zeros(dim),
                          scale_tril=np.eye(dim),
                          **_family_kwargs(rung, config))


def _draws(inner, unravel, n, loc, scale_tril, theta, key):
  """n draws `x [n, dim]` of the whitened family and `log q(x) [n]`, both in
  the flat unconstrained coordinates."""
  u, log_q = inner.sample_and_log_prob(unravel(theta), key, n)
  x = loc.astype(u.dtype) + u @ scale_tril.T.astype(u.dtype)
  return x, log_q - jnp.sum(jnp.log(jnp.diagonal(scale_tril))).astype(u.dtype)


def _surrogate_loss(inner, unravel, n, loc, scale_tril, theta, key, g):
  """`-mean(x . g) + mean(log q)`: with `g` the target's gradient at the
  draws (held fixed), its gradient in theta is the -ELBO's."""
  x, log_q = _draws(inner, unravel, n, loc, scale_tril, theta, key)
  return -jnp.mean(jnp.sum(x * jax.lax.stop_gradient(g), axis=-1)) + jnp.mean(
      log_q)


def _dadvi_programs(rung, config, dim, treedef_and_shapes, n):
  """The jitted draws and gradient of one DADVI solve (flat theta)."""
  inner = _inner(rung, config, dim)
  unravel = _unraveler(treedef_and_shapes)
  draws = host_jit(lambda loc, st, theta, key: _draws(
      inner, unravel, n, loc, st, theta, key), compile_cache.QUICK_OPTIONS)
  grad = host_jit(jax.grad(lambda theta, loc, st, key, g: _surrogate_loss(
      inner, unravel, n, loc, st, theta, key, g)), compile_cache.QUICK_OPTIONS)
  return draws, grad


def _unraveler(treedef_and_shapes):
  treedef, shapes = treedef_and_shapes
  sizes = [math.prod(s) for s, _ in shapes]

  def unravel(theta):
    leaves, at = [], 0
    for (shape, dtype), size in zip(shapes, sizes):
      leaves.append(theta[at:at + size].reshape(shape).astype(dtype))
      at += size
    return jax.tree_util.tree_unflatten(treedef, leaves)

  return unravel


def _ravel(params) -> tuple[np.ndarray, Any]:
  """A pytree's leaves as one float64 vector, and its hashable layout."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  shapes = tuple((tuple(np.shape(l)), str(np.asarray(l).dtype))
                 for l in leaves)
  flat = np.concatenate([np.asarray(l, np.float64).ravel() for l in leaves])
  return flat, (treedef, shapes)


class FitOutcome(NamedTuple):
  """The R fits of one stage as the host loop left them."""
  params: Params  # [R]
  num_grad_evals: int  # target-gradient evaluations, all fits
  iterations: int  # iterations (L-BFGS) or steps (Adam) of the longest fit
  max_iterations: int  # the most a fit would take
  out_of_time: bool  # stopped at the deadline before every fit was done


def _dadvi_solve(density, draws, grad, loc, scale_tril, theta0, key, config,
                 at) -> tuple[np.ndarray, int, int, bool]:
  """One fixed-draw solve by scipy's L-BFGS-B: `(theta, evaluations,
  iterations, out_of_time)`."""
  evals = [0]

  def fun(theta):
    evals[0] += 1
    x, log_q = draws(loc, scale_tril, theta, key)
    log_p, g = density.value_and_grad(x)
    value = float(np.mean(np.asarray(log_q, np.float64)) - np.mean(
        log_p.astype(np.float64)))
    if not (math.isfinite(value) and np.all(np.isfinite(g))):
      return math.inf, np.zeros_like(theta)
    return value, np.asarray(grad(theta, loc, scale_tril, key, g), np.float64)

  stop = time_budget.ScipyDeadline(at)
  ftol = sample_average.default_ftol(jnp.zeros((), np.dtype(density.dtype)))
  result = scipy.optimize.minimize(
      fun, theta0, jac=True, method="L-BFGS-B", callback=stop,
      options=dict(maxiter=config.max_iterations, ftol=ftol, gtol=DADVI_GTOL))
  return result.x, evals[0], int(result.nit), stop.stopped


def _fit_dadvi(density, rung, config, num_draws, loc, scale_tril, params0,
               fit_keys, at) -> FitOutcome:
  num_restarts, fit_keys = len(fit_keys), rng.unstack(fit_keys)
  thetas, evals, iterations, out_of_time = [], 0, 0, False
  for r in range(num_restarts):
    theta0, layout = _ravel(_row(params0, r))
    draws, grad = compile_cache.program(_dadvi_programs, _family(rung), config,
                                        density.dim, layout, num_draws)
    if out_of_time:  # the budget is spent: the fit stays at its start
      thetas.append(theta0)
      continue
    theta, n, nit, out_of_time = _dadvi_solve(
        density, draws, grad, loc, scale_tril, theta0, fit_keys[r], config, at)
    thetas.append(theta)
    evals, iterations = evals + n * num_draws, max(iterations, nit)
  params = _unravel_rows(layout, np.stack(thetas).astype(density.dtype))
  return FitOutcome(params, evals, iterations, config.max_iterations,
                    out_of_time)


def _adam(config) -> optax.GradientTransformation:
  """Adam with a warmup-cosine schedule (peak `FLOW_LEARNING_RATE`, decayed to
  1% of it) over `config.flow_steps` steps: in whitened coordinates the
  target is scaled close to N(0, I), so one schedule serves every target."""
  steps = config.flow_steps
  return optax.adam(optax.warmup_cosine_decay_schedule(
      0., FLOW_LEARNING_RATE, max(1, steps // 20), steps,
      FLOW_LEARNING_RATE / 100))


def _flow_programs(density, rung, config, layout):
  """The jitted start and advance of R vmapped Adam fits of the flow, over
  flat params `theta [R, P]`: start `(loc, st, theta) -> opt_state`, advance
  `(loc, st, theta, opt_state, keys [R, steps], begin, end) -> (theta,
  opt_state)`, Adam steps `begin` to `end` in one loop.

  The one program of a stage that calls the target: a flow step costs about
  0.5 ms of dispatch and host transfer when the host calls the kernel
  between steps, 2,000 steps 1 to 2 s, against 0.1 to 0.3 s to compile the
  target into this loop (small targets; benchmarks/RESULTS.md)."""
  inner, optimizer = _inner(rung, config, density.dim), _adam(config)
  unravel, n = _unraveler(layout), FLOW_SAMPLE_SIZE

  def step(loc, st, keys, i, carry):
    theta, opt_state = carry
    # One pass through the flow: the draws' pullback takes the -ELBO's
    # cotangents, -g / n at x (g the target's gradient there) and 1 / n at
    # log q (fits are independent: row r of the result is fit r's gradient).
    (x, log_q), pullback = jax.vjp(lambda t: jax.vmap(
        lambda tr, k: _draws(inner, unravel, n, loc, st, tr, k[i]))(t, keys),
                                   theta)
    _, g = density.traceable(x.reshape(-1, x.shape[-1]))
    grads, = pullback((-g.reshape(x.shape) / n, jnp.full_like(log_q, 1. / n)))
    updates, opt_state = jax.vmap(optimizer.update)(grads, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state

  def advance(loc, st, theta, opt_state, keys, begin, end):
    return jax.lax.fori_loop(
        begin, end, lambda i, c: step(loc, st, keys, i, c), (theta, opt_state))

  return (host_jit(jax.vmap(optimizer.init), compile_cache.QUICK_OPTIONS),
          host_jit(advance))


def _fit_flow(density, rung, config, loc, scale_tril, params0, fit_keys,
              at) -> FitOutcome:
  thetas, layout = zip(*[_ravel(_row(params0, r))
                         for r in range(len(fit_keys))])
  start, advance = compile_cache.program(_flow_programs, density, rung, config,
                                         layout[0])
  keys = compile_cache.quick_jitted(_step_keys, max(1, config.flow_steps))(fit_keys)
  theta = np.stack(thetas).astype(density.dtype)
  opt_state, taken, per_step = start(theta), 0, 0.
  while taken < config.flow_steps:
    left = time_budget.seconds_left(at)
    if left <= 0:
      break
    end = _next_stop(taken, per_step, left, config.flow_steps)
    t0 = time.perf_counter()
    theta, opt_state = jax.block_until_ready(advance(
        loc, scale_tril, theta, opt_state, keys, np.int32(taken),
        np.int32(end)))
    per_step = (time.perf_counter() - t0) / (end - taken)
    taken = end
  params = _unravel_rows(layout[0], np.asarray(theta))
  return FitOutcome(params, taken * FLOW_SAMPLE_SIZE * len(fit_keys), taken,
                    config.flow_steps, taken < config.flow_steps)


def _next_stop(done_at: int, per_step: float, left: float, limit: int) -> int:
  """The step the next chunk stops at: all that is left without a deadline;
  else, after a first chunk of `_FIRST_CHUNK` steps (it compiles), as many as
  half the time left allows at the last chunk's seconds per step, and at most
  `_MAX_CHUNK_SECONDS` of them (a chunk is not interrupted: if the machine
  slows down mid-chunk, the deadline is overrun by at most a few chunks'
  worth; one call more costs a dispatch)."""
  if math.isinf(left):
    return limit
  if done_at == 0 or per_step <= 0.:
    return min(limit, done_at + _FIRST_CHUNK)
  seconds = min(0.5 * left, _MAX_CHUNK_SECONDS)
  return min(limit, done_at + max(1, int(seconds / per_step)))


def _step_keys(steps, fit_keys):
  """`[R, steps]` step keys, drawing by unrolled Threefry on CPU (the same
  numbers: `vi_jax._src.rng`; a rolled hash loop per step costs as much as a
  small target's gradient)."""
  return unrolled_threefry_keys(
      jax.vmap(lambda k: jax.random.split(k, steps))(fit_keys))


def _row(params, r: int):
  """Fit `r`'s params (leaves indexed on the host: no slice program)."""
  return jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[r], params)


def _unravel_rows(layout, theta) -> Params:
  """`theta [R, P]` (numpy) as params with a leading `[R]`, on the host."""
  unravel = _unraveler(layout)
  rows = [unravel(row) for row in theta]
  return jax.tree_util.tree_map(lambda *leaves: jax.device_put(np.stack(leaves)),
                                *rows)


def fit(density: CompiledDensity, rung, config, num_draws, loc, scale_tril,
        params0, fit_keys, at: float) -> FitOutcome:
  """Runs the stage's R fits from `params0` until they are done or the
  deadline `at` (`vi_jax._src.time_budget`) has passed.

  Args:
    density: the target's `CompiledDensity`.
    rung: the family (`stages.ladder`); its `fitter` is "dadvi" or "adam".
    config: the stage `Config` (max_iterations, flow_steps, dtype).
    num_draws: Python int, DADVI's fixed draws (unused by Adam).
    loc, scale_tril: `[dim]`, `[dim, dim]`, the whitening Gaussian.
    params0: the R fits' initial params, leading `[R]`.
    fit_keys: `[R]` PRNG keys (DADVI's fixed draws, Adam's steps).
    at: Python float deadline; `math.inf` runs each fit to its end.

  Returns:
    A `FitOutcome`; `out_of_time` True when the deadline stopped a fit that
    was not done (DADVI's later restarts then stay at their start).

  References:
    Giordano, Ingram, Broderick (2024), DADVI; scipy's L-BFGS-B; optax's adam.
  """
  if rung.fitter == "adam":
    return _fit_flow(density, rung, config, loc, scale_tril, params0,
                     fit_keys, at)
  return _fit_dadvi(density, rung, config, num_draws, loc, scale_tril, params0,
                    fit_keys, at)


def _judge_program(num_fits: int, num_draws: int, dim: int):
  """The jitted `(log_w [R, S], x [R, S, dim]) -> (elbo [R], k_hat [R],
  mean_gap, sd_gap)` (target-free: shared by every stage and target of this
  shape). Compiled at level 0 (`QUICK_OPTIONS`): PSIS sorts only the M + 1
  largest log weights (`lax.top_k`), so level 0 runs it as fast as level 1
  and compiles it in a third of the time (0.2 against 0.6 s; a full sort ran
  4 to 6 times slower at level 0: benchmarks/RESULTS.md)."""
  del num_fits, num_draws, dim  # the cache key

  def run(log_w, x):
    log_w = jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)

    def one(lw, xi):
      smoothed = diagnostics.psis(lw)
      mean, var = diagnostics.weighted_moments(xi, smoothed.log_weights)
      return jnp.mean(lw), smoothed.pareto_k, mean, jnp.sqrt(var)

    elbo, k_hat, mean, sd = jax.vmap(one)(log_w, x)
    return (elbo, k_hat) + verdict.agreement(mean, sd)

  return host_jit(run, compile_cache.QUICK_OPTIONS)


def judge_draws(density: CompiledDensity, x, log_q) -> tuple:
  """`(elbo [R], k_hat [R], mean_gap, sd_gap)` of R fits' draws `x [R, S,
  dim]` (flat unconstrained) with their `log_q [R, S]`: the target evaluated
  by `density`, PSIS k-hat, ELBO and the PSIS-corrected moments' agreement
  (`vi_jax.auto.verdict.agreement`)."""
  x = np.asarray(x)
  log_p = density.value(x.reshape(-1, x.shape[-1]))
  return _judge(log_p.reshape(x.shape[:2]) - np.asarray(log_q), x)


def _judge(log_w, x):
  return compile_cache.program(_judge_program, *x.shape)(log_w, x)


def _eval_draws_program(rung, config, dim):
  """The jitted `(loc, scale_tril, params, key) -> (x [S, dim], log_q [S])`
  of one fit, S = `config.num_draws`: the one draw program of a family, dim
  and settings, for the verdict's draws, `refine_k_hat`'s and `sample`'s."""
  inner, ident = _inner(rung, config, dim), lambda p: p
  return host_jit(lambda loc, st, params, key: _draws(
      inner, ident, config.num_draws, loc, st, params, key),
                  compile_cache.QUICK_OPTIONS)


def _draw_program(rung, config, dim: int):
  """The cached `_eval_draws_program` of a family, dim and settings."""
  return compile_cache.program(_eval_draws_program, _family(rung), config,
                               dim)


def _num_fits(params) -> int:
  return len(jax.tree_util.tree_leaves(params)[0])


def _second_call(fn, *args) -> tuple:
  """`(seconds, result)` of `fn(*args)`'s second call (the first compiles)."""
  fn(*args)
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0, out


def evaluate(density: CompiledDensity, rung, config, loc, scale_tril, params,
             eval_key) -> tuple:
  """`(elbo [R], k_hat [R], mean_gap, sd_gap)` of the R fits (params with a
  leading `[R]`), from `config.num_draws` draws each with the same
  `eval_key` (common random numbers: differences between fits are not Monte
  Carlo noise of these draws); the moments are of the flat unconstrained
  coordinates (Yao et al. 2018 for k-hat as a VI diagnostic)."""
  draws = _draw_program(rung, config, density.dim)
  x, log_q = zip(*[draws(loc, scale_tril, _row(params, r), eval_key)
                   for r in range(_num_fits(params))])
  return judge_draws(density, np.stack(x), np.stack(log_q))


def evaluation_seconds(density: CompiledDensity, rung, config, loc,
                       scale_tril, params, eval_key) -> float:
  """The seconds `evaluate` will take on the R fits of `params`, its
  programs compiled first (so a stage can keep that much of a deadline for
  its evaluation).

  One fit's draws are made twice (the second is timed), the target's kernel
  is timed on one batch (its second call) and the verdict program run once,
  then scaled to R fits and `R * num_draws` rows. An evaluation run to time
  itself cost as much as the stage's own on a costly target (6 s a stage on
  lgcp: 2 x 16,000 GP densities).

  Args:
    density: the target's `CompiledDensity`.
    rung: the family (`stages.ladder`).
    config: the stage `Config` (its `num_draws`).
    loc, scale_tril: `[dim]`, `[dim, dim]`, the whitening Gaussian.
    params: the R fits' params, leading `[R]` (fit 0's draws are timed).
    eval_key: the PRNG key `evaluate` will draw with.

  Returns:
    A Python float, seconds (the verdict's compile included: an upper bound
    for that part).

  Raises:
    Nothing of its own; errors of the target or surrogate propagate.
  """
  draw_seconds, (x, log_q) = _second_call(
      _draw_program(rung, config, density.dim), loc, scale_tril,
      _row(params, 0), eval_key)
  x, log_q = np.asarray(x), np.asarray(log_q)
  batch_seconds, _ = _second_call(density.value, x[:BATCH])
  num_fits = _num_fits(params)
  t0 = time.perf_counter()
  x_all = np.broadcast_to(x, (num_fits,) + x.shape)
  log_q_all = np.broadcast_to(log_q, (num_fits,) + log_q.shape)
  jax.block_until_ready(_judge(
      np.zeros(log_q_all.shape, density.dtype) - log_q_all, x_all))
  judge_seconds = time.perf_counter() - t0
  batches = -(-num_fits * x.shape[0] // BATCH)
  return num_fits * draw_seconds + batches * batch_seconds + judge_seconds


def fit_draws(rung, config, loc, scale_tril):
  """`(params, key, n) -> (x [n, dim], log_q [n])`: n draws of one fit of the
  whitened family, in the flat unconstrained coordinates (numpy), in chunks
  of `config.num_draws` by the program `evaluate` uses (one compile per
  family, dim and settings, whatever n; more than one chunk draws with the
  keys of `jax.random.split(key, chunks)`)."""
  dim, size = int(np.shape(loc)[0]), config.num_draws

  def draws(params, key, n):
    program = _draw_program(rung, config, dim)
    chunks = -(-n // size)
    keys = rng.split(key, chunks) if chunks > 1 else (key,)
    x, log_q = zip(*[program(loc, scale_tril, params, k) for k in keys])
    return np.concatenate(x)[:n], np.concatenate(log_q)[:n]

  return draws


def _init_program(space, rung, config):
  """The jitted `(loc, scale_tril, fit_keys [R]) -> params [R]`: the
  whitened family's initial params, one per restart. It does not call the
  target, so targets share it."""

  def run(loc, scale_tril, fit_keys):
    surrogate = whitened(rung, config, space, loc, scale_tril)
    return jax.vmap(lambda k: surrogate.init(jax.random.fold_in(k, 1)))(
        fit_keys)

  return host_jit(run, compile_cache.QUICK_OPTIONS)


def init_params(space, rung, config, loc, scale_tril, fit_keys) -> Params:
  """The R fits' initial params (`[R]` leading axis)."""
  return compile_cache.program(_init_program, space, rung, config)(
      loc, scale_tril, fit_keys)
