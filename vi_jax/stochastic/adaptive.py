"""Stochastic VI without a learning rate to choose or a step count to guess.

`fit_adaptive` follows Stan ADVI's step-size adaptation and the R-hat
stopping rule of Dhaka et al. (2020) / RAABBVI (Welandawe et al. 2024):

1. Grid: run Adam from the same start with every learning rate of a grid IN
   PARALLEL (`jax.vmap` over the rate, held as an array by
   `optax.inject_hyperparams`), with the same draws for every rate (common
   random numbers), for `grid_steps` steps. Choose the rate whose mean loss
   over the last half of the grid run is lowest (the window average, not the
   last noisy value; non-finite runs never win).
2. Continue the chosen run in windows of `window` steps (one compiled chunk,
   reused). After each window compute the split-R-hat of the window's
   iterates (first half vs second half, per parameter); stop when the largest
   is below `r_hat_threshold`: the iterates have stopped drifting and only
   fluctuate around the optimum. Return the average of the window's iterates
   (Polyak-Ruppert averaging), which is much closer to the optimum than the
   last iterate at a constant step size.
"""

import warnings
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from vi_jax._src.types import Array, Params, PRNGKey, TargetLogProbFn
from vi_jax._src import compile_cache
from vi_jax._src import validation as vv
from vi_jax.stochastic.svi import build
from vi_jax.model.target import check_target_on_draw

__all__ = ["AdaptiveResult", "fit_adaptive"]


class AdaptiveResult(NamedTuple):
  """What `fit_adaptive` returns."""
  params: Params  # the average of the final window's iterates
  learning_rate: Array  # shape=(): the step size chosen from the grid
  num_steps: Array  # shape=(), int: optimizer steps in all (grid included)
  num_grad_evals: Array  # shape=(), int: num_steps x sample_size
  r_hat: Array  # shape=(): largest split-R-hat of the final window's iterates
  converged: Array  # shape=(), bool: stopped by the R-hat rule
  trace: Array  # [num_steps_of_final_run]: loss of the chosen run, per step


def _algorithm(target_log_prob_fn, surrogate, sample_size):
  return build(target_log_prob_fn, surrogate,
               optax.inject_hyperparams(optax.adam)(learning_rate=1.),
               sample_size=sample_size)


def _run(alg, state, keys):
  """`keys: [n]` steps of `alg` from `state`; returns the final state, the
  losses `[n]` and the flattened iterates after each step `[n, P]`."""

  def body(s, k):
    s, info = alg.step(s, k)
    return s, (info.loss, ravel_pytree(s.params)[0])

  state, (losses, iterates) = jax.lax.scan(body, state, keys)
  return state, losses, iterates


def _grid(target_log_prob_fn, surrogate, sample_size, num_steps, params,
          learning_rates, key):
  """Every learning rate from `params` for `num_steps` steps, vmapped."""
  alg = _algorithm(target_log_prob_fn, surrogate, sample_size)
  keys = jax.random.split(key, num_steps)

  def one(lr):
    state = alg.init(key, init_params=params)
    state = state._replace(opt_state=optax.tree.set(
        state.opt_state, learning_rate=jnp.asarray(lr, jnp.result_type(
            ravel_pytree(params)[0]))))
    state, losses, _ = _run(alg, state, keys)
    return state, losses

  return jax.vmap(one)(learning_rates)


def _chunk(target_log_prob_fn, surrogate, sample_size, num_steps, state, key):
  """`num_steps` more steps of the chosen run: the state, the losses
  `[num_steps]`, and the mean and sum of squared deviations `[P]` of the
  flattened iterates (the sufficient statistics of split-R-hat)."""
  alg = _algorithm(target_log_prob_fn, surrogate, sample_size)
  state, losses, iterates = _run(alg, state, jax.random.split(key, num_steps))
  mean = jnp.mean(iterates, axis=0)
  return state, losses, mean, jnp.sum(jnp.square(iterates - mean), axis=0)


def _pool(means: np.ndarray, m2s: np.ndarray, size: int):
  """Mean and squared deviations of equal chunks of `size` iterates pooled
  (Chan et al.'s parallel update)."""
  mean = means.mean(axis=0)
  return mean, m2s.sum(axis=0) + size * np.square(means - mean).sum(axis=0)


def split_r_hat(means: np.ndarray, m2s: np.ndarray, size: int) -> np.ndarray:
  """Split-R-hat `[P]` of the iterates of an even number of chunks.

  The chunks' first half and second half are the two chains (Gelman et al.
  2013, BDA3 eq. 11.4; `tfp.mcmc.potential_scale_reduction` with
  `split_chains=True` computes the same from the iterates themselves, which
  would need all of them in memory). A parameter constant over the window
  has R-hat 1.
  """
  half = means.shape[0] // 2
  n = half * size
  stats = [_pool(means[:half], m2s[:half], size),
           _pool(means[half:], m2s[half:], size)]
  chain_means = np.stack([m for m, _ in stats])
  within = np.mean([m2 / (n - 1) for _, m2 in stats], axis=0)
  between = n * np.var(chain_means, axis=0, ddof=1)
  var_hat = (n - 1) / n * within + between / n
  with np.errstate(divide="ignore", invalid="ignore"):
    r_hat = np.sqrt(var_hat / within)
  return np.where((within == 0) & (between == 0), 1., r_hat)


def _best_window(means: list, m2s: list, size: int):
  """viabel's R_hat_convergence_check: split-R-hat over up to 5 windows of
  the latest chunks (2 chunks up to about 95% of the run); returns the
  smallest max-R-hat, its window's iterate mean and its number of chunks."""
  pairs = len(means) // 2
  counts = sorted({2 * int(j) for j in np.linspace(1, max(1, int(
      0.95 * pairs)), num=5)})
  best = (np.inf, None, 0)
  for c in counts:
    mu, m2 = np.asarray(means[-c:]), np.asarray(m2s[-c:])
    r_hat = float(np.max(split_r_hat(mu, m2, size)))
    if r_hat < best[0] or best[1] is None:
      best = (r_hat, mu.mean(axis=0), c)
  return best


def _score(losses: Array) -> Array:
  """Mean loss over the last half of each grid run; inf if non-finite."""
  tail = losses[:, losses.shape[1] // 2:]
  score = jnp.mean(tail, axis=1)
  return jnp.where(jnp.isfinite(score), score, jnp.inf)


def _check_args(learning_rates, grid_steps, max_steps, window,
                r_hat_threshold):
  lrs = np.asarray(learning_rates, dtype=float)
  if lrs.ndim != 1 or lrs.size < 1 or not np.all(np.isfinite(lrs)) or np.any(
      lrs <= 0):
    raise ValueError("learning_rates must be a non-empty 1-d sequence of "
                     f"finite floats > 0; got {learning_rates!r}.")
  grid_steps = vv.positive_int("grid_steps", grid_steps)
  if grid_steps < 2:
    raise ValueError(f"grid_steps must be >= 2; got {grid_steps}.")
  max_steps = vv.positive_int("max_steps", max_steps)
  window = vv.positive_int("window", window)
  if window < 4:
    raise ValueError(f"window must be >= 4 (split R-hat); got {window}.")
  if max_steps < grid_steps + window:
    raise ValueError(
        f"max_steps must be >= grid_steps + window = {grid_steps + window}; "
        f"got {max_steps}.")
  try:
    threshold = float(r_hat_threshold)
  except (TypeError, ValueError):
    threshold = float("nan")
  if not threshold > 1:
    raise ValueError(
        f"r_hat_threshold must be a float > 1; got {r_hat_threshold!r}.")
  return lrs, grid_steps, max_steps, window, threshold


def fit_adaptive(target_log_prob_fn: TargetLogProbFn, surrogate, *,
                 key: PRNGKey, sample_size: int = 8,
                 learning_rates: Sequence[float] = (1., 0.3, 0.1, 0.03, 0.01,
                                                    0.003),
                 grid_steps: int = 200, max_steps: int = 10_000,
                 window: int = 200, r_hat_threshold: float = 1.1,
                 init_params: Optional[Params] = None) -> AdaptiveResult:
  """Adam with its step size chosen on a grid and stopped by iterate R-hat.

  1. Every rate in `learning_rates` runs `grid_steps` Adam steps from the same
     start with the same draws, vmapped in one compile
     (`optax.inject_hyperparams(optax.adam)`, the rate an array). The rate with
     the lowest mean loss (-ELBO) over the last half of its run is chosen
     (Stan ADVI's eta adaptation, run in parallel instead of in turn).
  2. The chosen run continues in chunks of `window // 2` steps (one compiled
     chunk, reused), keeping only each chunk's iterate mean and sum of
     squared deviations. After each chunk, the split-R-hat (Gelman-Rubin on
     the two halves of a window) of the flattened params is computed over up
     to 5 windows of the latest chunks, from `window` steps up to 95% of the
     run, and the window with the smallest largest R-hat kept (viabel's
     `R_hat_convergence_check`; Dhaka et al. 2020). Below `r_hat_threshold`
     the iterates are stationary: the fit stops and returns their average
     over that window (Polyak-Ruppert averaging). Otherwise it continues until
     the chosen run has taken `max_steps` steps; then `converged` is False,
     with a warning, and the best window's average is returned.

  The steps are `vi.build`'s (negative ELBO, reparameterization gradient,
  non-finite updates skipped). A host-side driver: not itself jit/vmap-able;
  its two programs (grid, window) compile once per (target, surrogate,
  settings) and are reused across windows and calls.

  Args:
    target_log_prob_fn: unnormalized log density of ONE draw (TFP's calling
      convention, as for `vi.fit`).
    surrogate: a `vi_jax.surrogates.Surrogate`.
    key: a PRNG key (split for the init, the grid and each window).
    sample_size: Python int >= 1, Monte Carlo draws per step.
    learning_rates: the grid of Adam step sizes (floats > 0).
    grid_steps: Python int >= 2, steps of every grid run.
    max_steps: Python int, the most steps of the chosen run (its grid steps
      included); >= grid_steps + window.
    window: Python int >= 4, the smallest window of iterates checked and
      averaged (viabel's W_min); R-hat is checked every `window // 2` steps.
    r_hat_threshold: float > 1 (1.1 as in Dhaka et al. and viabel).
    init_params: optional starting params (structure of `surrogate.init`).

  Returns:
    `AdaptiveResult(params, learning_rate, num_steps, num_grad_evals, r_hat,
    converged, trace)`; `num_steps` counts the grid runs of every rate plus
    the windows; `trace` is the loss of the chosen run at each of its steps
    (grid part included).

  Raises:
    TypeError / ValueError (before compilation): a bad `key`, `surrogate`,
      `sample_size`, `learning_rates`, `grid_steps`, `max_steps`, `window`,
      `r_hat_threshold` or `init_params`; a target that fails or is not
      scalar on one draw.

  References:
    Kucukelbir et al. 2017, "Automatic Differentiation Variational
    Inference" (Stan's eta adaptation); Dhaka, Catalina, Andersen, Magnusson,
    Huggins & Vehtari 2020, "Robust, Accurate Stochastic Optimization for
    Variational Inference", NeurIPS; Welandawe, Andersen, Vehtari & Huggins
    2024, "A Framework for Improving the Reliability of Black-box Variational
    Inference" (RAABBVI; github.com/jhuggins/viabel); Polyak & Juditsky 1992.
  """
  vv.prng_key(key)
  vv.surrogate(surrogate)
  if not callable(target_log_prob_fn):
    raise TypeError(
        f"target_log_prob_fn must be callable; got {target_log_prob_fn!r}.")
  sample_size = vv.positive_int("sample_size", sample_size)
  lrs, grid_steps, max_steps, window, threshold = _check_args(
      learning_rates, grid_steps, max_steps, window, r_hat_threshold)
  init_key, grid_key, run_key = jax.random.split(key, 3)
  if init_params is None:
    init_params = surrogate.init(init_key)
  else:
    vv.surrogate_params("init_params", surrogate, key, init_params)
  check_target_on_draw(target_log_prob_fn, surrogate, key, init_params)
  statics = (target_log_prob_fn, surrogate, sample_size)
  states, grid_losses = compile_cache.jitted(_grid, *statics, grid_steps)(
      init_params, jnp.asarray(lrs), grid_key)
  best = int(jnp.argmin(_score(grid_losses)))
  state = jax.tree_util.tree_map(lambda x: x[best], states)
  size = window // 2
  chunk = compile_cache.jitted(_chunk, *statics, size)
  traces, means, m2s, steps = [grid_losses[best]], [], [], grid_steps
  while True:
    state, losses, mean, m2 = chunk(state, jax.random.fold_in(run_key, steps))
    traces.append(losses)
    means.append(np.asarray(mean))
    m2s.append(np.asarray(m2))
    steps += size
    if len(means) >= 2:
      r_hat, average, _ = _best_window(means, m2s, size)
      converged = bool(r_hat < threshold)
      if converged or steps + size > max_steps:
        break
  if not converged:
    warnings.warn(
        f"fit_adaptive: the iterates did not become stationary (split R-hat "
        f"{float(r_hat):.3g} >= {threshold:g}) within max_steps={max_steps}; "
        "the returned average of the last window is not converged. Raise "
        "max_steps, or whiten/rescale the target.", stacklevel=2)
  total = (lrs.size - 1) * grid_steps + steps
  int_dtype = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
  return AdaptiveResult(
      params=ravel_pytree(init_params)[1](jnp.asarray(average, mean.dtype)),
      learning_rate=jnp.asarray(lrs[best], mean.dtype),
      num_steps=jnp.asarray(total, int_dtype),
      num_grad_evals=jnp.asarray(total * sample_size, int_dtype),
      r_hat=jnp.asarray(r_hat, mean.dtype), converged=jnp.asarray(converged),
      trace=jnp.concatenate(traces))

