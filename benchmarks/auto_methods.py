"""The methods of `benchmarks.auto_accuracy`, each run until the fit is right.

Every `run_*` returns `Row`s: whether the accuracy (`accuracy`, `passes`:
every mean within MEAN_TOL reference sd, every sd within SD_TOL) was reached,
at how many target-gradient evaluations and wall seconds. What each method
runs and how its cost is counted: `benchmarks.auto_accuracy`'s docstring.
"""

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import auto_targets
from benchmarks import peers

NUM_DRAWS = 4000
MEAN_TOL = 0.1  # |mean err| / reference sd
SD_TOL = 0.1  # |sd / reference sd - 1|
CHUNK = 100  # steps per compiled chunk of the stochastic fits


class Row(NamedTuple):
  target: str
  method: str
  reached: bool
  grad_evals: int  # at the first passing check, else at the last one
  wall_s: float
  max_mean_err: float  # over coordinates, / reference sd
  max_sd_err: float  # max |sd / reference sd - 1|
  note: str


def accuracy(target, flat_draws) -> tuple[float, float]:
  """(max |mean err| / sd, max |sd ratio - 1|) of `[n, num_ref]` draws."""
  z = np.asarray(flat_draws, np.float64)
  if not np.all(np.isfinite(z)):
    return float("inf"), float("inf")
  mean_err = np.abs(z.mean(0) - target.ref_mean) / target.ref_std
  sd_err = np.abs(z.std(0, ddof=1) / target.ref_std - 1)
  return float(mean_err.max()), float(sd_err.max())


def passes(errors) -> bool:
  return errors[0] <= MEAN_TOL and errors[1] <= SD_TOL


# ---- stochastic Gaussian VI peers, stepped in compiled chunks ----


def _adam(learning_rate):
  return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


def _peer_stepper(target, library, family, sample_size):
  """(init(lr, key) -> state, chunk(state, key) -> state, fitted(state))."""
  if library == "blackjax":
    alg, _ = peers.blackjax_vi(target, family, _adam(1e-2), sample_size)

    def init(lr, key):
      del key
      return peers.blackjax_vi(target, family, _adam(lr), sample_size)[1]

    step = lambda state, k: alg.step(k, state)[0]
    fitted = lambda state: peers.blackjax_fitted(state, family, None)
  else:
    svi = peers.numpyro_svi(target, family, _adam(1e-2), sample_size)
    svi.init(jax.random.key(0))  # sets up the guide; states come from `init`

    def init(lr, key):
      return peers.numpyro_svi(target, family, _adam(lr), sample_size).init(key)

    step = lambda state, k: svi.update(state)[0]
    fitted = lambda state: peers.numpyro_fitted(svi.get_params(state), family,
                                                None)

  @jax.jit
  def chunk(state, key):
    return jax.lax.scan(lambda s, k: (step(s, k), None), state,
                        jax.random.split(key, CHUNK))[0]

  return init, chunk, jax.jit(fitted)


def _checks(max_steps):
  steps, s = [], CHUNK
  while s <= max_steps:
    steps.append(s)
    s *= 2
  return steps


def run_stochastic(target, library, family, config) -> Row:
  """The best learning rate's cost to accuracy (see the module docstring)."""
  init, chunk, fitted = _peer_stepper(target, library, family,
                                      config.sample_size)
  draw = jax.jit(lambda f, k: target.constrain(peers.gaussian_draws(
      f, k, NUM_DRAWS)[0]))
  key = jax.random.key(0)
  t0 = time.perf_counter()
  chunk = chunk.lower(init(1e-2, key), key).compile()
  compile_s = time.perf_counter() - t0
  best, notes = None, []
  for lr in config.learning_rates:
    wall, done, row = compile_s, 0, None
    t0 = time.perf_counter()
    state = jax.block_until_ready(init(lr, key))
    wall += time.perf_counter() - t0
    for check in _checks(config.max_steps):
      while done < check:
        t0 = time.perf_counter()
        state = jax.block_until_ready(chunk(state, jax.random.fold_in(key,
                                                                      done)))
        wall += time.perf_counter() - t0
        done += CHUNK
      err = accuracy(target, draw(fitted(state), jax.random.key(1)))
      row = (passes(err), done * config.sample_size, wall, *err)
      if row[0]:
        break
    notes.append(f"lr {lr:g}: " + ("reached" if row[0] else
                                   f"{max(row[3], row[4]):.2g}"))
    if best is None or _better(row, best[1]):
      best = (lr, row)
  lr, (ok, evals, wall, e_mean, e_sd) = best
  name = {"blackjax": "Blackjax ", "numpyro": "NumPyro "}[library] + (
      {"mean-field": "meanfield_vi", "full-rank": "fullrank_vi"}[family]
      if library == "blackjax" else
      {"mean-field": "AutoNormal", "full-rank": "AutoMultivariateNormal"}[
          family])
  return Row(target.name, name, ok, evals, wall, e_mean, e_sd,
             f"best lr {lr:g}, S={config.sample_size}; " + ", ".join(notes))


def _better(row, best) -> bool:
  if row[0] != best[0]:
    return row[0]
  if row[0]:
    return row[1] < best[1]
  return max(row[3], row[4]) < max(best[3], best[4])


# ---- Blackjax Pathfinder, one path and multi-path ----


def _counting(log_prob, counter):
  """`log_prob` whose gradient evaluations add 1 to `counter[0]` on the host."""

  def bump():
    counter[0] += 1

  @jax.custom_vjp
  def f(u):
    return log_prob(u)

  def fwd(u):
    value, grad = jax.value_and_grad(log_prob)(u)
    jax.debug.callback(bump)
    return value, grad

  f.defvjp(fwd, lambda grad, ct: (ct * grad,))
  return f


def run_pathfinder(target, config) -> list:
  """Rows for Blackjax pathfinder (path 0) and multi-path (all paths)."""
  from blackjax.vi import multipathfinder, pathfinder  # pylint: disable=g-import-not-at-top
  counter = [0]
  log_p = _counting(target.unconstrained_log_prob, counter)
  inits = jax.random.uniform(jax.random.key(2), (config.num_paths, target.dim),
                             target.dtype, -2., 2.)
  keys = jax.random.split(jax.random.key(3), config.num_paths)
  pool = 1000
  single = multi = None
  for maxiter in config.pathfinder_maxiter:
    approx = jax.jit(lambda k, x0, m=maxiter: pathfinder.approximate(
        k, log_p, x0, 200, maxiter=m)[0])
    draw = jax.jit(lambda k, s, n: pathfinder.sample(k, s, n), static_argnums=2)
    states, evals, walls = [], [], []
    for i in range(config.num_paths):
      counter[0] = 0
      t0 = time.perf_counter()
      states.append(jax.block_until_ready(approx(keys[i], inits[i])))
      walls.append(time.perf_counter() - t0)
      evals.append(counter[0])
    density = (maxiter + 1) * 200
    u0 = draw(jax.random.key(4), states[0], NUM_DRAWS)[0]
    err = accuracy(target, target.constrain(u0))
    single = Row(target.name, "Blackjax pathfinder", passes(err), evals[0],
                 walls[0], *err, f"maxiter {maxiter}, +{density} density")
    t0 = time.perf_counter()
    draws = [draw(jax.random.fold_in(jax.random.key(5), i), s, pool)
             for i, s in enumerate(states)]
    samples = jnp.stack([d[0] for d in draws])
    state = multipathfinder.MultipathfinderState(
        jax.tree.map(lambda *x: jnp.stack(x), *states), samples,
        jax.vmap(jax.vmap(target.unconstrained_log_prob))(samples),
        jnp.stack([d[1] for d in draws]))
    api = multipathfinder.as_top_level_api(target.unconstrained_log_prob)
    u = jax.block_until_ready(api.sample(jax.random.key(6), state, NUM_DRAWS))
    k_hat = float(multipathfinder.psis_weights(state)[1])
    err = accuracy(target, target.constrain(u))
    multi = Row(target.name, "Blackjax multi-path pathfinder", passes(err),
                sum(evals), sum(walls) + time.perf_counter() - t0, *err,
                f"{config.num_paths} paths, maxiter {maxiter}, "
                f"+{config.num_paths * (density + pool)} density, "
                f"PSIS k-hat {k_hat:.2f}")
    if single.reached and multi.reached:
      break
  return [single, multi]


# ---- NumPyro NUTS, the reference row ----


def run_nuts(target, config) -> Row:
  t0 = time.perf_counter()
  u, steps, _ = auto_targets.nuts_draws(
      target.unconstrained_log_prob, target.dim, jax.random.key(7),
      config.nuts_warmup, max(config.nuts_draws), collect_warmup=True)
  wall = time.perf_counter() - t0
  steps = np.asarray(steps)
  warm = int(steps[:, :config.nuts_warmup].sum())
  for n in config.nuts_draws:
    err = accuracy(target, target.constrain(u[:, :n].reshape(-1, target.dim)))
    evals = warm + int(steps[:, config.nuts_warmup:config.nuts_warmup + n].sum())
    if passes(err):
      break
  return Row(target.name, "NumPyro NUTS (reference)", passes(err), evals, wall,
             *err, f"{u.shape[0]} chains x {n} draws, {config.nuts_warmup} "
             f"warmup (wall: whole run of {max(config.nuts_draws)} draws)")


# ---- vi_jax auto_fit ----


class _StandIn(NamedTuple):
  sample: object
  num_grad_evals: int
  reliable: bool
  k_hat: float
  family: str


def standin_auto_fit(target_log_prob_fn, event_shape, bijector=None, *, key,
                     num_steps=2000, sample_size=16):
  """vi.fit (full-rank, Adam 1e-2) behind auto_fit's interface (`--standin`)."""
  import vi_jax as vi  # pylint: disable=g-import-not-at-top
  surrogate = vi.surrogates.full_rank_normal(event_shape, bijector)
  fit_key, diag_key = jax.random.split(key)
  result = vi.fit(target_log_prob_fn, surrogate, optax.adam(1e-2), num_steps,
                  key=fit_key, sample_size=sample_size)
  diag = vi.diagnostics.diagnose(target_log_prob_fn, surrogate, result.params,
                                 diag_key)
  k_hat = float(diag.pareto_k)
  return _StandIn(
      lambda k, n: surrogate.sample_and_log_prob(result.params, k, n)[0],
      num_steps * sample_size, k_hat <= 0.7, k_hat, "full-rank")


def run_auto_fit(target, standin: bool) -> Row:
  import vi_jax as vi  # pylint: disable=g-import-not-at-top
  fn, name = getattr(vi, "auto_fit", None), "vi_jax auto_fit"
  if fn is None:
    if not standin:
      return Row(target.name, name, False, 0, float("nan"), float("nan"),
                 float("nan"), "skipped: vi.auto_fit does not exist yet")
    fn, name = standin_auto_fit, "vi_jax stand-in (vi.fit full-rank)"
  t0 = time.perf_counter()
  result = fn(target.target_log_prob_fn, target.event_shape, target.bijector,
              key=jax.random.key(0))
  z = jax.block_until_ready(result.sample(jax.random.key(1), NUM_DRAWS))
  wall = time.perf_counter() - t0
  err = accuracy(target, target.flatten_z(z))
  return Row(target.name, name, passes(err), int(result.num_grad_evals), wall,
             *err, f"reliable={bool(result.reliable)}, k-hat "
             f"{float(result.k_hat):.2f}, family {getattr(result, 'family', '?')}")
