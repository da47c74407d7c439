"""The fit loop: `build` gives the pure init/step pair, `fit` scans it under jit.

Keys are made outside the loop (`lax.scan(step, state, keys)`, as blackjax
does; key t is `fold_in(loop_key, t)` so runs can be resumed bit for bit); the
optax optimizer and the target are closed over and never cross the `jit`
boundary; only arrays (params, keys, data) do.

The default path (no criterion, no progress bar, NaN safety on) adds to the
bare step one `isfinite` reduction over the loss and gradients and a
`jnp.where` select on params and optimizer state.
"""

import functools
from typing import Any, Callable, NamedTuple, Optional
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vi_jax import minibatch as mb
from vi_jax import progress
from vi_jax._rng import unrolled_threefry_keys
from vi_jax._types import Array, LossFn, Params, PRNGKey, PyTree
from vi_jax.convergence import check_criterion
from vi_jax.convergence import ConvergenceCriterion
from vi_jax.losses import negative_elbo
from vi_jax.surrogates.base import check_sample_size
from vi_jax.surrogates.base import Surrogate
from vi_jax.target import call_target
from vi_jax.target import check_target

__all__ = [
    "VIState",
    "TraceableQuantities",
    "VIAlgorithm",
    "FitResult",
    "build",
    "fit",
]


class VIState(NamedTuple):
  """The whole loop state (a pytree of arrays; checkpointable, resumable).

  `step` counts loop iterations (skipped non-finite ones included), so the
  key of iteration `step` is `fold_in(loop_key, step)` whatever the split of a
  run into pieces.
  """
  params: Params  # surrogate params pytree
  opt_state: optax.OptState
  step: Array  # shape=(), int32: number of iterations taken
  model_params: PyTree = ()  # learned model params (or ())
  data_state: PyTree = ()  # vi_jax.minibatch.MinibatchState (or ())
  criterion_state: PyTree = ()  # the convergence criterion's state (or ())
  converged: Array = np.bool_(False)  # shape=(), bool: the criterion fired
  num_nonfinite: Array = np.int32(0)  # shape=(), int32: skipped steps
  num_consecutive_nonfinite: Array = np.int32(0)  # shape=(), int32


class TraceableQuantities(NamedTuple):
  """What one step exposes to `trace_fn` (tfp.math.minimize's convention)."""
  loss: Array  # shape=(), the loss evaluated at `params` (e.g. -ELBO)
  params: Params  # the params at which loss and grads were evaluated
  grads: Params  # d loss / d params, same structure as params
  step: Array  # shape=(), int32: index of this step
  model_params: PyTree = ()  # model params at which loss was evaluated
  model_grads: PyTree = ()  # d loss / d model_params
  is_finite: Array = np.bool_(True)  # shape=(), bool: loss and grads finite
  has_converged: Array = np.bool_(False)  # shape=(), bool: criterion fired


class VIAlgorithm(NamedTuple):
  """The init/step pair for custom loops (blackjax's VIAlgorithm shape).

  Attributes:
    init: `(key, init_params=None, init_model_params=None) -> VIState`.
    step: `(state, key, data=None) -> (state, TraceableQuantities)`; `data`
      is the full data pytree when the algorithm was built with data.
  """
  init: Callable[..., VIState]
  step: Callable[..., tuple[VIState, TraceableQuantities]]


class FitResult(NamedTuple):
  """What `fit` returns.

  With a convergence criterion or an early stop on non-finite values, only
  the first `num_steps_taken` rows of `trace` are real (`trace_mask`); the
  rest repeat the last real row (TFP's padding).
  """
  params: Params  # optimized surrogate params
  trace: PyTree  # trace_fn outputs stacked with a leading [num_steps] axis
  state: VIState  # final loop state (pass as init_state= to resume)
  model_params: PyTree = None  # learned model params (None if not learned)
  num_steps_taken: Array = None  # shape=(), int32: iterations run in this fit
  converged: Array = None  # shape=(), bool: the criterion fired
  num_nonfinite: Array = None  # shape=(), int32: skipped steps in this fit
  diverged: Array = None  # shape=(), bool: stopped on consecutive non-finite
  trace_mask: Array = None  # [num_steps], bool: real rows of trace


def _default_trace_fn(tq: TraceableQuantities) -> Array:
  return tq.loss


def _check_num_steps(num_steps) -> int:
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) and not (
      hasattr(num_steps, "__index__") and not hasattr(num_steps, "shape")):
    raise TypeError(f"num_steps must be a Python int >= 1; got {num_steps!r}.")
  if int(num_steps) < 1:
    raise ValueError(f"num_steps must be >= 1; got {num_steps}.")
  return int(num_steps)


def _check_surrogate(surrogate) -> None:
  for field in ("init", "sample_and_log_prob", "log_prob"):
    if not callable(getattr(surrogate, field, None)):
      raise TypeError(
          "surrogate must be a vi_jax.surrogates.Surrogate (a NamedTuple with "
          f"init, sample_and_log_prob, log_prob); got {type(surrogate).__name__}"
          f" without a callable {field!r}.")


def _check_optimizer(optimizer) -> None:
  if not (callable(getattr(optimizer, "init", None)) and
          callable(getattr(optimizer, "update", None))):
    raise TypeError(
        "optimizer must be an optax.GradientTransformation (with init and "
        f"update); got {type(optimizer).__name__}.")


def _check_key(key) -> None:
  if key is None:
    raise TypeError("key must be a PRNG key (jax.random.key(0) or "
                    "jax.random.PRNGKey(0)); got None.")
  if not hasattr(key, "shape"):
    raise TypeError(f"key must be a PRNG key array; got {type(key).__name__}.")
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  if (typed and key.shape != ()) or (not typed and key.shape != (2,)):
    raise ValueError(
        "key must be a single PRNG key (shape () typed or (2,) uint32); got "
        f"shape {key.shape}. To run several fits, jax.vmap over keys.")


def _check_init_params(surrogate, key, init_params) -> None:
  expected = jax.eval_shape(surrogate.init, key)
  exp_struct = jax.tree_util.tree_structure(expected)
  got_struct = jax.tree_util.tree_structure(init_params)
  if exp_struct != got_struct:
    raise ValueError(
        "init_params must have the structure of surrogate.init(key): expected "
        f"{exp_struct}, got {got_struct}.")
  for e, g in zip(jax.tree_util.tree_leaves(expected),
                  jax.tree_util.tree_leaves(init_params)):
    if tuple(jnp.shape(g)) != tuple(e.shape):
      raise ValueError(
          "init_params leaf shapes must match surrogate.init(key): expected "
          f"{jax.tree_util.tree_map(lambda s: s.shape, expected)}, got "
          f"{jax.tree_util.tree_map(jnp.shape, init_params)}.")


def _one_draw_fn(surrogate, key, init_params):
  """`(draw, args)`: `draw(*args)` is one draw of the surrogate (no sample
  axis), for `check_target`'s single `eval_shape`."""
  params = init_params if init_params is not None else jax.eval_shape(
      surrogate.init, key)

  def draw(p):
    z, _ = surrogate.sample_and_log_prob(p, key, 1)
    return jax.tree_util.tree_map(lambda x: x[0], z)

  return draw, (params,)


def _with_model_params(surrogate: Surrogate) -> Surrogate:
  """The surrogate over `(params, model_params)` with a point mass on the latter.

  Draws are `(model_params broadcast to [sample_size], z)` and `log_q` is the
  surrogate's (a point mass contributes no density, TFP's Deterministic trick
  for observed values); so any `LossFn` differentiates the target with respect
  to the model params through its fused per-draw gradient.
  """

  def broadcast(mp, n):
    return jax.tree_util.tree_map(
        lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), mp)

  def sample_and_log_prob(pm, key, sample_size):
    z, log_q = surrogate.sample_and_log_prob(pm[0], key, sample_size)
    return (broadcast(pm[1], sample_size), z), log_q

  def log_prob(pm, z):
    return surrogate.log_prob(pm[0], z[1])

  dist_fn = surrogate.distribution_fn
  return surrogate._replace(
      init=lambda key: (surrogate.init(key), ()),
      sample_and_log_prob=sample_and_log_prob, log_prob=log_prob,
      distribution_fn=None if dist_fn is None else (lambda pm: dist_fn(pm[0])))


def _all_finite(value, tree) -> Array:
  ok = jnp.isfinite(value)
  for leaf in jax.tree_util.tree_leaves(tree):
    ok = ok & jnp.all(jnp.isfinite(leaf))
  return ok


def _select(pred, new, old):
  return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


def _check_max_nonfinite(k):
  if k is None:
    return None
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(
        f"max_consecutive_nonfinite must be None or a Python int >= 1; got {k!r}.")
  return k


def build(target_log_prob_fn, surrogate, optimizer: optax.GradientTransformation,
          *, sample_size: int = 1, loss: Optional[LossFn] = None,
          model_params: Optional[PyTree] = None, data: Optional[PyTree] = None,
          batch_size: Optional[int] = None, num_shards: int = 1,
          convergence_criterion: Optional[ConvergenceCriterion] = None,
          skip_nonfinite: bool = True,
          max_consecutive_nonfinite: Optional[int] = 10) -> VIAlgorithm:
  """The pure init/step pair that `fit` scans, for custom loops.

  Use it to write your own `lax.scan`, or to step from Python with callbacks
  (Bean Machine's `VariationalInfer.step()`, Edward's `update()`):

      alg = vi.build(log_p, surrogate, optax.adam(1e-2), sample_size=8)
      state = alg.init(jax.random.key(0))
      step = jax.jit(alg.step)
      for k in jax.random.split(jax.random.key(1), 1000):
        state, info = step(state, k)

  Args:
    target_log_prob_fn: log density of one draw (TFP's calling convention),
      called as `f([model_params,] [batch,] *z)` (see `fit`).
    surrogate: a `vi_jax.surrogates.Surrogate`.
    optimizer: an optax `GradientTransformation`, closed over. With model
      params it updates the pair `(params, model_params)`.
    sample_size: Python int >= 1, Monte Carlo draws per step.
    loss: a `LossFn` (default `vi_jax.losses.negative_elbo()`).
    model_params: initial model params (a pytree of float arrays) learned
      jointly, or None. `init` uses it unless given `init_model_params`.
    data: a data pytree with leading [N] (used here for its shapes only; pass
      it to `step` each call), or None.
    batch_size: rows per step (None: all N rows every step).
    num_shards: draw rows within this many contiguous blocks (see
      `vi_jax.minibatch`); the number of devices for sharded data.
    convergence_criterion: a `vi_jax.convergence.ConvergenceCriterion`; its
      state lives in `VIState.criterion_state` and `VIState.converged`.
    skip_nonfinite: skip updates whose loss or gradient is not finite (params
      and optimizer state kept, key advanced, `num_nonfinite` counted).
    max_consecutive_nonfinite: after this many consecutive skipped steps the
      state stops updating (None: never).

  Returns:
    A `VIAlgorithm(init, step)`. `init(key, init_params=None,
    init_model_params=None)` returns a `VIState`; `step(state, key, data=None)`
    returns `(new_state, TraceableQuantities)` where the quantities are
    evaluated at the params before the update. A state that has converged or
    stopped on non-finite values is left unchanged by `step`.

  Raises:
    TypeError / ValueError: bad `surrogate`, `optimizer`, `sample_size`,
      `data`/`batch_size`/`num_shards`, criterion or model params.
  """
  return _build(
      target_log_prob_fn, surrogate, optimizer, sample_size=sample_size,
      loss=loss, model_params=model_params, data=data, batch_size=batch_size,
      num_shards=num_shards, convergence_criterion=convergence_criterion,
      skip_nonfinite=skip_nonfinite,
      max_consecutive_nonfinite=max_consecutive_nonfinite)[0]


def _build(target_log_prob_fn, surrogate, optimizer: optax.GradientTransformation,
          *, sample_size: int = 1, loss: Optional[LossFn] = None,
          model_params: Optional[PyTree] = None, data: Optional[PyTree] = None,
          batch_size: Optional[int] = None, num_shards: int = 1,
          convergence_criterion: Optional[ConvergenceCriterion] = None,
          skip_nonfinite: bool = True,
          max_consecutive_nonfinite: Optional[int] = 10) -> VIAlgorithm:
  """`build`, plus `loss_at(state, key, data)`: the step's loss only."""
  _check_surrogate(surrogate)
  _check_optimizer(optimizer)
  sample_size = check_sample_size(sample_size)
  loss_fn = loss if loss is not None else negative_elbo()
  if not callable(loss_fn):
    raise TypeError(f"loss must be a callable LossFn; got {loss_fn!r}.")
  if convergence_criterion is not None:
    check_criterion(convergence_criterion)
  max_nonfinite = _check_max_nonfinite(max_consecutive_nonfinite)
  learn_mp = model_params is not None
  if learn_mp:
    for leaf in jax.tree_util.tree_leaves(model_params):
      if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
        raise TypeError("model_params must be a pytree of float arrays; got a "
                        f"leaf of dtype {jnp.result_type(leaf)}.")
  uses_data = data is not None
  if uses_data:
    n_rows, rows_per_step = mb.check(data, batch_size, num_shards)
  elif batch_size is not None:
    raise ValueError("batch_size was given without data.")
  aug_surrogate = _with_model_params(surrogate) if learn_mp else surrogate

  def objective(trainable, key, batch):
    target = target_log_prob_fn
    if batch is not None:
      if learn_mp:
        target = lambda mp, *a, **k: target_log_prob_fn(mp, batch, *a, **k)
      else:
        target = functools.partial(target_log_prob_fn, batch)
    if learn_mp:
      user = target
      target = lambda mp, z: call_target(functools.partial(user, mp), z)
    return loss_fn(target, aug_surrogate, trainable, key, sample_size)

  value_and_grad = jax.value_and_grad(objective)

  def init(key, init_params=None, init_model_params=None):
    params = surrogate.init(key) if init_params is None else init_params
    mp = init_model_params if init_model_params is not None else model_params
    mp = jax.tree_util.tree_map(jnp.asarray, mp) if learn_mp else ()
    trainable = (params, mp) if learn_mp else params
    criterion_state = ()
    if convergence_criterion is not None:
      batch_spec = mb.spec(data, rows_per_step) if uses_data else None
      value = jax.eval_shape(lambda t, b: objective(t, key, b), trainable,
                             batch_spec)
      spec = jax.eval_shape(convergence_criterion.init, value, trainable,
                            trainable)
      criterion_state = jax.tree_util.tree_map(
          lambda s: jnp.zeros(s.shape, s.dtype), spec)
    return VIState(
        params=params, opt_state=optimizer.init(trainable),
        step=jnp.zeros((), jnp.int32), model_params=mp,
        data_state=mb.init_state(n_rows, num_shards) if uses_data else (),
        criterion_state=criterion_state, converged=jnp.zeros((), bool),
        num_nonfinite=jnp.zeros((), jnp.int32),
        num_consecutive_nonfinite=jnp.zeros((), jnp.int32))

  def step(state, key, data=None):
    if uses_data:
      if data is None:
        raise ValueError("this algorithm was built with data: pass "
                         "step(state, key, data).")
      key, batch_key = jax.random.split(key)
      batch, data_state = mb.draw(state.data_state, batch_key, data,
                                  rows_per_step, num_shards)
    else:
      batch, data_state = None, state.data_state
    trainable = (state.params, state.model_params) if learn_mp else state.params
    value, grads = value_and_grad(trainable, key, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    converged, criterion_state = state.converged, state.criterion_state
    fired = jnp.zeros((), bool)
    if convergence_criterion is not None:
      first = state.step == 0
      c_init = convergence_criterion.init(value, grads, new_trainable)
      fired, c_next = convergence_criterion.update(
          state.step, value, grads, new_trainable, state.criterion_state)
      c_next = _select(first, c_init, c_next)
      fired = jnp.asarray(fired, bool) & ~first
    active = ~state.converged
    if max_nonfinite is not None:
      active = active & (state.num_consecutive_nonfinite < max_nonfinite)
    num_nonfinite = state.num_nonfinite
    consecutive = state.num_consecutive_nonfinite
    if skip_nonfinite:
      finite = _all_finite(value, grads)
      ok = finite & active
      new_trainable = _select(ok, new_trainable, trainable)
      opt_state = _select(ok, opt_state, state.opt_state)
      num_nonfinite = num_nonfinite + (active & ~finite).astype(jnp.int32)
      consecutive = jnp.where(active, jnp.where(finite, 0, consecutive + 1),
                              consecutive).astype(jnp.int32)
    else:
      finite = jnp.ones((), bool)
      ok = active
      if max_nonfinite is not None or convergence_criterion is not None:
        new_trainable = _select(ok, new_trainable, trainable)
        opt_state = _select(ok, opt_state, state.opt_state)
    if convergence_criterion is not None:
      fired = fired & ok
      criterion_state = _select(ok, c_next, state.criterion_state)
      converged = converged | fired
    params, mp = new_trainable if learn_mp else (new_trainable, ())
    g, mg = grads if learn_mp else (grads, ())
    info = TraceableQuantities(
        loss=value, params=state.params, grads=g, step=state.step,
        model_params=state.model_params, model_grads=mg, is_finite=finite,
        has_converged=fired)
    new_state = VIState(
        params=params, opt_state=opt_state, step=state.step + 1,
        model_params=mp, data_state=data_state,
        criterion_state=criterion_state, converged=converged,
        num_nonfinite=num_nonfinite, num_consecutive_nonfinite=consecutive)
    return new_state, info

  def loss_at(state, key, data=None):
    """The step's loss only (no gradient): fit's check at initialization."""
    batch = None
    if uses_data:
      key, batch_key = jax.random.split(key)
      batch, _ = mb.draw(state.data_state, batch_key, data, rows_per_step,
                         num_shards)
    trainable = (state.params, state.model_params) if learn_mp else state.params
    return objective(trainable, key, batch)

  return VIAlgorithm(init=init, step=step), loss_at


def _trace_state_clean() -> bool:
  """True when `fit` is called outside any jit/vmap/grad trace."""
  try:
    from jax._src import core as jax_core  # pylint: disable=g-import-not-at-top
    return bool(jax_core.trace_state_clean())
  except Exception:  # pylint: disable=broad-except
    return False


def _is_traced(*trees) -> bool:
  return any(isinstance(l, jax.core.Tracer)
             for l in jax.tree_util.tree_leaves(trees))


def _check_init_state(alg, key, init_state, data) -> None:
  if not isinstance(init_state, VIState):
    raise TypeError("init_state must be a VIState (a previous "
                    f"FitResult.state); got {type(init_state).__name__}.")
  expected = jax.eval_shape(alg.init, key)
  e_struct = jax.tree_util.tree_structure(expected)
  g_struct = jax.tree_util.tree_structure(init_state)
  if e_struct != g_struct:
    raise ValueError(
        "init_state does not match this fit's loop state (same surrogate, "
        "optimizer, model_params, data and convergence_criterion are needed "
        f"to resume): expected {e_struct}, got {g_struct}.")
  for e, g in zip(jax.tree_util.tree_leaves(expected),
                  jax.tree_util.tree_leaves(init_state)):
    if tuple(e.shape) != tuple(jnp.shape(g)):
      raise ValueError("init_state leaf shapes differ from this fit's loop "
                       f"state: {tuple(jnp.shape(g))} vs {tuple(e.shape)}.")


def fit(target_log_prob_fn, surrogate, optimizer: optax.GradientTransformation,
        num_steps: int, *, key: PRNGKey, sample_size: int = 1,
        loss: Optional[LossFn] = None,
        trace_fn: Optional[Callable[[TraceableQuantities], Any]] = None,
        convergence_criterion: Optional[ConvergenceCriterion] = None,
        init_params: Optional[Params] = None,
        init_state: Optional[VIState] = None,
        model_params: Optional[PyTree] = None,
        data: Optional[PyTree] = None, batch_size: Optional[int] = None,
        num_shards: int = 1, progress_bar: Any = None,
        skip_nonfinite: bool = True,
        max_consecutive_nonfinite: Optional[int] = 10) -> FitResult:
  """Fits `surrogate` to `target_log_prob_fn` by stochastic optimization.

  Runs `num_steps` optimizer steps in one `jax.lax.scan` (a
  `jax.lax.while_loop` that stops early when a `convergence_criterion` is
  given) inside one `jax.jit`; composes with an outer `jax.jit`, `jax.vmap`
  over keys (independent restarts in one compile, see `vi_jax.restarts`) and
  `jax.grad` (the scan path; a while loop is not reverse-differentiable).

  The key of iteration t is `fold_in(split(key)[1], t)`, so N steps then M
  steps resumed from `result.state` (`init_state=`) with the same key give
  bit for bit the params of one N + M run. On CPU, Threefry keys are
  rewrapped (`vi_jax._rng`) so that their random bits, identical to
  `jax.random`'s, compile to one fused kernel instead of a rolled loop per
  step.

  Args:
    target_log_prob_fn: unnormalized log density of ONE draw, called as
      `f(*z)` (tuple/list z), `f(**z)` (dict z) or `f(z)` (array z); returns a
      scalar. vi_jax vmaps it over draws. With `model_params` the model params
      come first: `f(model_params, *z)`; with `data` the step's
      `vi_jax.minibatch.Batch` comes next: `f([model_params,] batch, *z)`.
    surrogate: a `vi_jax.surrogates.Surrogate`.
    optimizer: an optax `GradientTransformation` (e.g. `optax.adam(1e-2)`, or
      with a schedule).
    num_steps: Python int >= 1, the maximum number of iterations.
    key: a single PRNG key; split once for init and folded in per step.
    sample_size: Python int >= 1, Monte Carlo draws per step.
    loss: a `LossFn` (default: `vi_jax.losses.negative_elbo()`).
    trace_fn: `TraceableQuantities -> pytree` recorded every step; default
      records the loss.
    convergence_criterion: a `vi_jax.convergence.ConvergenceCriterion`
      (`loss_not_decreasing`, `relative_params_change`, `relative_loss_change`
      or your own); the loop stops after the step at which it fires.
    init_params: optional starting params (structure of `surrogate.init(key)`).
    init_state: a previous `FitResult.state` to resume from (the whole loop
      state: params, optimizer, step, criterion, minibatch and model params).
    model_params: initial model params (pytree of float arrays), learned
      jointly with the surrogate (variational EM: Edward's KLqp with model
      variables, the TFP GP example); returned in `FitResult.model_params`.
    data: a data pytree with leading [N] rows (see `vi_jax.minibatch`); may be
      sharded over devices (`vi_jax.sharding.shard_data`).
    batch_size: rows per step, drawn without replacement; the target scales its
      likelihood by `batch.scale = N / batch_size`. None: all rows.
    num_shards: row blocks for per-shard drawing; use the number of devices the
      data is sharded over (keep it fixed to get the same draws on 1 device).
    progress_bar: None (on when stderr is a TTY and the fit is not traced by
      an outer jit/vmap), True, False or a
      `vi_jax.progress.ProgressBar(every, file, desc)`. Off means no callback
      is compiled in.
    skip_nonfinite: skip updates with a non-finite loss or gradient.
    max_consecutive_nonfinite: stop after this many consecutive skipped steps
      (None: never stop on them).

  Returns:
    `FitResult(params, trace, state, model_params, num_steps_taken, converged,
    num_nonfinite, diverged, trace_mask)`; `trace` has a leading `[num_steps]`
    axis whose first `num_steps_taken` rows are real.

  Raises:
    TypeError / ValueError (before compilation): `num_steps < 1`,
      `sample_size < 1`, a bad `key`, `surrogate`, `optimizer`, criterion,
      `data`/`batch_size`, `init_params` or `init_state` whose structure or
      shapes differ, a target that fails or returns a non-scalar on one draw.
    FloatingPointError: the loss at the initial params is not finite (the loop
      is not run; checked only when fit is called outside jit/vmap/grad).

  References:
    tfp.vi.fit_surrogate_posterior_stateless; tfp.math.minimize (criteria,
    trace padding); blackjax.vi.meanfield_vi; numpyro.infer.SVI.run.
  """
  num_steps = _check_num_steps(num_steps)
  _check_key(key)
  if progress_bar is None and _is_traced(key):
    progress_bar = False  # default: no bar inside an outer jit/vmap
  settings = progress.resolve_progress_bar(progress_bar)
  alg, loss_at = _build(target_log_prob_fn, surrogate, optimizer,
              sample_size=sample_size, loss=loss, model_params=model_params,
              data=data, batch_size=batch_size, num_shards=num_shards,
              convergence_criterion=convergence_criterion,
              skip_nonfinite=skip_nonfinite,
              max_consecutive_nonfinite=max_consecutive_nonfinite)
  if init_state is not None:
    if init_params is not None:
      raise ValueError("give init_params or init_state, not both.")
    _check_init_state(alg, key, init_state, data)
    z_params = init_state.params
  else:
    if init_params is not None:
      _check_init_params(surrogate, key, init_params)
    z_params = init_params
  draw, draw_args = _one_draw_fn(surrogate, key, z_params)
  lead = []
  if model_params is not None:
    lead.append(jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)),
        model_params))
  if data is not None:
    lead.append(mb.spec(data, mb.check(data, batch_size, num_shards)[1]))
  if lead:
    check_target(target_log_prob_fn, None,
                 extra_call=lambda lz: call_target(
                     functools.partial(target_log_prob_fn, *lz[0]), lz[1]),
                 draw=lambda p, lv: (lv, draw(p)),
                 draw_args=draw_args + (tuple(lead),))
  else:
    check_target(target_log_prob_fn, None, draw=draw, draw_args=draw_args)
  trace_is_loss = trace_fn is None or trace_fn is _default_trace_fn
  trace_fn = trace_fn or _default_trace_fn
  init_key, loop_key = jax.random.split(key)
  reporter = None
  if settings is not None:
    reporter = progress.make_reporter(settings, num_steps)

  # The check of the initial loss runs only for a top-level call (not under an
  # outer jit/vmap/grad, where it could not raise anyway): a forward pass of
  # the loss, then the loop under a lax.cond. Under outer transformations a
  # target may close over their tracers, which a forward-only pass of the
  # fused-gradient target would not accept.
  check_init = _trace_state_clean()
  loss_dtype = jnp.result_type(*[
      l for l in jax.tree_util.tree_leaves(jax.eval_shape(
          surrogate.init, key) if z_params is None else z_params)
      if jnp.issubdtype(jnp.result_type(l), jnp.floating)] or [float])

  def run(init_key, loop_key, init_params, init_state, data):
    state0 = (init_state if init_state is not None else
              alg.init(init_key, init_params))
    keys = jax.vmap(lambda i: jax.random.fold_in(loop_key, i))(
        state0.step + jnp.arange(num_steps, dtype=jnp.int32))
    # Same bits, unrolled Threefry on CPU (vi_jax._rng): no nested loop/step.
    keys = unrolled_threefry_keys(keys)
    if check_init:  # step 0's loss, value only (a forward pass, once)
      loss0 = loss_at(state0, keys[0], data)
      ok0 = jnp.isfinite(loss0)
    else:
      loss0 = jnp.zeros((), loss_dtype)
      ok0 = jnp.ones((), bool)
    # trace_fn's output structure from stand-in quantities (gradients have
    # the params' shapes); dead code in the compiled program.
    fake = TraceableQuantities(
        loss=loss0, params=state0.params, grads=state0.params,
        step=state0.step, model_params=state0.model_params,
        model_grads=state0.model_params, is_finite=ok0, has_converged=ok0)
    trace_spec = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)),
        trace_fn(fake))

    def zeros_trace():
      return jax.tree_util.tree_map(
          lambda s: jnp.zeros((num_steps,) + s.shape, s.dtype), trace_spec)

    if convergence_criterion is None:

      def body(state, ik):
        _, k = ik
        active = ~state.converged
        if max_consecutive_nonfinite is not None:
          active = active & (state.num_consecutive_nonfinite <
                             max_consecutive_nonfinite)
        state, tq = alg.step(state, k, data)
        trace = trace_fn(tq)
        # The default trace is the loss itself: no second [num_steps] buffer.
        return state, ((trace, active) if trace_is_loss else
                       (trace, active, tq.loss))

      def loop(state):
        idx = jnp.arange(num_steps, dtype=jnp.int32)
        if reporter is None:
          state, ys = jax.lax.scan(body, state, (idx, keys))
        else:  # chunks of `every` steps, one bar update between chunks
          every = reporter.every
          n_chunks, head = num_steps // every, num_steps // every * every
          parts = []
          if n_chunks:

            def chunk(carry, iks):
              state, next_report = carry
              state, ys = jax.lax.scan(body, state, iks)
              next_report = reporter.maybe_report(iks[0][-1] + 1, ys[2 - trace_is_loss * 2][-1],
                                                  next_report)
              return (state, next_report), ys

            (state, _), ys = jax.lax.scan(
                chunk, (state, jnp.asarray(every, jnp.int32)),
                jax.tree_util.tree_map(
                    lambda x: x[:head].reshape((n_chunks, every) + x.shape[1:]),
                    (idx, keys)))
            parts.append(jax.tree_util.tree_map(
                lambda y: y.reshape((head,) + y.shape[2:]), ys))
          if head < num_steps:
            state, ys = jax.lax.scan(body, state, (idx[head:], keys[head:]))
            parts.append(ys)
          ys = parts[0] if len(parts) == 1 else jax.tree_util.tree_map(
              lambda *a: jnp.concatenate(a), *parts)
        trace, mask, losses = ys if len(ys) == 3 else (ys[0], ys[1], ys[0])
        taken = jnp.sum(mask.astype(jnp.int32)).astype(jnp.int32)
        last = losses[jnp.maximum(taken - 1, 0)]
        return state, trace, taken, last
    else:

      def cond(carry):
        state, _, i, _, _ = carry
        go = (i < num_steps) & ~state.converged
        if max_consecutive_nonfinite is not None:
          go = go & (state.num_consecutive_nonfinite <
                     max_consecutive_nonfinite)
        return go

      def wbody(carry):
        state, trace, i, _, next_report = carry
        state, tq = alg.step(state, keys[i], data)
        if reporter is not None:
          next_report = reporter.maybe_report(i + 1, tq.loss, next_report)
        trace = jax.tree_util.tree_map(
            lambda buf, v: jax.lax.dynamic_update_index_in_dim(
                buf, v.astype(buf.dtype), i, 0), trace, trace_fn(tq))
        return state, trace, i + 1, tq.loss.astype(loss0.dtype), next_report

      def loop(state):
        first = reporter.every if reporter is not None else 0
        state, trace, taken, last, _ = jax.lax.while_loop(
            cond, wbody,
            (state, zeros_trace(), jnp.zeros((), jnp.int32), loss0,
             jnp.asarray(first, jnp.int32)))
        return state, trace, taken, last

    def skip(state):
      return state, zeros_trace(), jnp.zeros((), jnp.int32), loss0

    if check_init:
      state, trace, taken, last = jax.lax.cond(ok0, loop, skip, state0)
    else:
      state, trace, taken, last = loop(state0)
    if reporter is not None and not check_init:
      # Under an outer transformation the bar is closed from inside the
      # program; a top-level call closes it on the host after the run (one
      # callback fewer).
      reporter.finish(taken, last)
    mask = jnp.arange(num_steps) < taken
    trace = jax.tree_util.tree_map(
        lambda t: jnp.where(mask.reshape((-1,) + (1,) * (t.ndim - 1)), t,
                            t[jnp.maximum(taken - 1, 0)]), trace)
    diverged = jnp.zeros((), bool)
    if max_consecutive_nonfinite is not None:
      diverged = state.num_consecutive_nonfinite >= max_consecutive_nonfinite
    result = FitResult(
        params=state.params, trace=trace, state=state,
        model_params=state.model_params if model_params is not None else None,
        num_steps_taken=taken, converged=state.converged,
        num_nonfinite=state.num_nonfinite - state0.num_nonfinite,
        diverged=diverged, trace_mask=mask)
    return result, (loss0, last)

  if init_state is None:
    # Initialized in a program of its own, so that a fresh fit and a resumed
    # one run the same compiled loop (bit-identical resumption).
    init_state = jax.jit(alg.init)(init_key, init_params)
  result, (loss0, last_loss) = jax.jit(run)(init_key, loop_key, init_params,
                                            init_state, data)
  if reporter is not None:
    jax.effects_barrier()
    if check_init and not _is_traced(last_loss):
      reporter.host(result.num_steps_taken, last_loss, True)
    reporter.host.close()
  if check_init and not _is_traced(loss0):
    if not bool(jnp.isfinite(loss0)):
      raise FloatingPointError(
          f"vi.fit: the loss at the initial params is {float(loss0)} (not "
          "finite), so the loop was not run. Check target_log_prob_fn at the "
          "surrogate's initial draws (supports, bijectors, init_params / "
          "model_params).")
    if bool(result.diverged):
      warnings.warn(
          f"vi.fit stopped at step {int(result.num_steps_taken)}: "
          f"{max_consecutive_nonfinite} consecutive steps had a non-finite "
          f"loss or gradient ({int(result.num_nonfinite)} skipped in all); "
          "the returned params are the last finite ones.", RuntimeWarning,
          stacklevel=2)
  return result
