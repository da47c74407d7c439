"""The fit driver: validate, build, init, keys, run, host checks, result.

`build` composes one step from pieces that each own their slice of `VIState`
(`vi_jax.stochastic.step.core_step`, then `vi_jax.stochastic.convergence.with_criterion`,
`vi_jax.stochastic.guards.with_nonfinite_guard` and `vi_jax.stochastic.minibatch.with_minibatch`);
`fit` runs it with `vi_jax.stochastic.loop.run` inside one `jax.jit`:

    spec = _validate(...)                   # every argument, before tracing
    program = _program(spec, ...)           # cached per identical call
    state = program.init(init_key, ...)     # a program of its own (resume)
    result = program.run(loop_key, state, data)
    _host_checks(...)                       # initial loss, skipped steps

Keys are made outside the loop (key t is `fold_in(loop_key, t)`, so runs
resume bit for bit); the optimizer and the target are closed over and never
cross the `jit` boundary; only arrays (params, keys, data) do. A top-level
call reuses the compiled program of an earlier call with the same objects
and settings (`vi_jax._src.compile_cache`).
"""

from typing import Any, Callable, NamedTuple, Optional
import warnings

import jax
import jax.numpy as jnp
import optax

from vi_jax._src import compile_cache
from vi_jax.stochastic import loop
from vi_jax.stochastic import minibatch as mb
from vi_jax.stochastic import progress
from vi_jax._src.rng import unrolled_threefry_keys
from vi_jax._src.tracing import is_traced
from vi_jax._src.tracing import under_transformation
from vi_jax._src.types import Array, LossFn, Params, PRNGKey, PyTree
from vi_jax._src import validation as vv
from vi_jax._src.validation import callable_arg
from vi_jax._src.validation import float_pytree
from vi_jax._src.validation import optional_positive_int
from vi_jax._src.validation import positive_int
from vi_jax.stochastic.convergence import check_criterion
from vi_jax.stochastic.convergence import ConvergenceCriterion
from vi_jax.stochastic.convergence import criterion_state_spec
from vi_jax.stochastic.convergence import with_criterion
from vi_jax.stochastic.guards import data_note
from vi_jax.stochastic.guards import nonfinite_rows
from vi_jax.stochastic.guards import skip_report
from vi_jax.stochastic.guards import with_nonfinite_guard
from vi_jax.objectives.losses import negative_elbo
from vi_jax.stochastic.minibatch import with_minibatch
from vi_jax.stochastic.sharding import is_main_process
from vi_jax.stochastic.step import core_step
from vi_jax.stochastic.step import joint
from vi_jax.stochastic.step import TraceableQuantities
from vi_jax.stochastic.step import VIState
from vi_jax.model.target import BoundTarget
from vi_jax.model.target import check_target_on_draw

__all__ = [
    "VIState",
    "TraceableQuantities",
    "VIAlgorithm",
    "FitResult",
    "build",
    "fit",
]

_DEFAULT_LOSS = negative_elbo()  # one object, so the compile cache can hit


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
  skipped: Array = None  # [num_steps], bool: steps whose update was skipped


def _default_trace_fn(tq: TraceableQuantities) -> Array:
  return tq.loss


class _Spec(NamedTuple):
  """A validated fit specification: what `_algorithm` composes."""
  target: Any  # target_log_prob_fn
  surrogate: Any
  optimizer: optax.GradientTransformation
  loss: LossFn
  criterion: Optional[ConvergenceCriterion]
  sample_size: int
  model_params: Optional[PyTree]  # initial model params; None: not learned
  data_spec: Any  # a minibatch.Batch of ShapeDtypeStructs; None: no data
  n_rows: Optional[int]  # N
  batch_size: Optional[int]  # rows per step
  num_shards: int
  skip_nonfinite: bool
  max_nonfinite: Optional[int]


def _validate(target_log_prob_fn, surrogate, optimizer, *, sample_size, loss,
              model_params, data, batch_size, num_shards,
              convergence_criterion, skip_nonfinite,
              max_consecutive_nonfinite) -> _Spec:
  """Every argument of `build`, checked before anything is traced."""
  callable_arg("target_log_prob_fn", target_log_prob_fn,
               "a callable log density of one draw")
  vv.surrogate(surrogate)
  vv.optimizer(optimizer)
  loss = _DEFAULT_LOSS if loss is None else callable_arg(
      "loss", loss, "a LossFn, (target_log_prob_fn, surrogate, params, key, "
      "sample_size) -> scalar")
  if convergence_criterion is not None:
    check_criterion(convergence_criterion)
  if model_params is not None:
    float_pytree("model_params", model_params)
  num_shards = positive_int("num_shards", num_shards)
  n_rows = rows = data_spec = None
  if data is not None:
    n_rows, rows = mb.check(data, batch_size, num_shards)
    data_spec = mb.spec(data, rows)
  elif batch_size is not None:
    raise ValueError("batch_size was given without data.")
  return _Spec(
      target_log_prob_fn, surrogate, optimizer, loss, convergence_criterion,
      positive_int("sample_size", sample_size), model_params, data_spec,
      n_rows, rows, num_shards, bool(skip_nonfinite),
      optional_positive_int("max_consecutive_nonfinite",
                            max_consecutive_nonfinite))


def _without_data(inner):
  def step(state, key, data=None):
    del data
    return inner(state, key, None)
  return step


def _algorithm(spec: _Spec) -> tuple[VIAlgorithm, Callable]:
  """`(VIAlgorithm(init, step), loss_at)`: the composed step; `loss_at(state,
  key, data)` is its loss alone (a forward pass, fit's initial check)."""
  learn = spec.model_params is not None

  def objective(trainable, key, batch):
    params, mp = trainable if learn else (trainable, None)
    target = spec.target
    if learn or batch is not None:  # f([model_params,] [batch,] *z)
      target = BoundTarget(spec.target, mp, batch)
    return spec.loss(target, spec.surrogate, params, key, spec.sample_size)

  step = core_step(objective, spec.optimizer, learn)
  if spec.criterion is not None:
    step = with_criterion(step, spec.criterion, learn)
  step = with_nonfinite_guard(
      step, skip_nonfinite=spec.skip_nonfinite,
      max_consecutive_nonfinite=spec.max_nonfinite,
      gated=spec.criterion is not None)
  loss_only = lambda state, key, batch: (state, objective(
      joint(state.params, state.model_params, learn), key, batch))
  if spec.data_spec is not None:
    step = with_minibatch(step, spec.batch_size, spec.num_shards)
    loss_at = with_minibatch(loss_only, spec.batch_size, spec.num_shards)
  else:
    step, loss_at = _without_data(step), _without_data(loss_only)

  def init(key, init_params=None, init_model_params=None):
    params = spec.surrogate.init(key) if init_params is None else init_params
    mp = spec.model_params if init_model_params is None else init_model_params
    mp = jax.tree_util.tree_map(jnp.asarray, mp) if learn else ()
    trainable = joint(params, mp, learn)
    criterion_state = ()
    if spec.criterion is not None:
      value = jax.eval_shape(objective, trainable, key, spec.data_spec)
      criterion_state = criterion_state_spec(spec.criterion, value, trainable)
    zero = jnp.zeros((), jnp.int32)
    return VIState(
        params=params, opt_state=spec.optimizer.init(trainable), step=zero,
        model_params=mp, criterion_state=criterion_state,
        data_state=(mb.init_state(spec.n_rows, spec.num_shards)
                    if spec.data_spec is not None else ()),
        converged=jnp.zeros((), bool), num_nonfinite=zero,
        num_consecutive_nonfinite=zero)

  return VIAlgorithm(init=init, step=step), (
      lambda state, key, data=None: loss_at(state, key, data)[1])


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
    loss: a `LossFn` (default `vi_jax.objectives.losses.negative_elbo()`).
    model_params: initial model params (a pytree of float arrays) learned
      jointly, or None. `init` uses it unless given `init_model_params`.
    data: a data pytree with leading [N] (used here for its shapes only; pass
      it to `step` each call), or None.
    batch_size: rows per step (None: all N rows every step).
    num_shards: draw rows within this many contiguous blocks (see
      `vi_jax.stochastic.minibatch`); the number of devices for sharded data.
    convergence_criterion: a `vi_jax.stochastic.convergence.ConvergenceCriterion`; its
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
  return _algorithm(_validate(
      target_log_prob_fn, surrogate, optimizer, sample_size=sample_size,
      loss=loss, model_params=model_params, data=data, batch_size=batch_size,
      num_shards=num_shards, convergence_criterion=convergence_criterion,
      skip_nonfinite=skip_nonfinite,
      max_consecutive_nonfinite=max_consecutive_nonfinite))[0]


class _Program(NamedTuple):
  """The compiled pieces of one fit (cached for top-level calls)."""
  init: Callable  # jitted (key, init_params, model_params) -> VIState
  run: Callable  # jitted (loop_key, state, data) -> (FitResult, (loss0, last))
  reporter: Any  # vi_jax.stochastic.progress.Reporter, or None


def _make_program(spec, num_steps, trace_fn, trace_is_loss, settings,
                  check_init) -> _Program:
  alg, loss_at = _algorithm(spec)
  reporter = (None if settings is None else
              progress.make_reporter(settings, num_steps))

  def run(loop_key, state0, data):
    keys = jax.vmap(lambda i: jax.random.fold_in(loop_key, i))(
        state0.step + jnp.arange(num_steps, dtype=jnp.int32))
    # Same bits, unrolled Threefry on CPU (vi_jax._src.rng): no nested loop/step.
    keys = unrolled_threefry_keys(keys)
    if check_init:  # step 0's loss, value only (a forward pass, once)
      loss0 = loss_at(state0, keys[0], data)
      ok0 = jnp.isfinite(loss0)
    else:  # under an outer jit/vmap/grad it could not raise anyway
      floats = [l for l in jax.tree_util.tree_leaves(state0.params)
                if jnp.issubdtype(jnp.result_type(l), jnp.floating)]
      loss0, ok0 = jnp.zeros((), jnp.result_type(*floats or [float])), None
    out = loop.run(alg.step, state0, keys, data, trace_fn=trace_fn,
                   trace_is_loss=trace_is_loss, reporter=reporter,
                   stops_early=spec.criterion is not None,
                   max_nonfinite=spec.max_nonfinite, loss0=loss0, ok0=ok0)
    if reporter is not None and not check_init:
      # Under an outer transformation the bar is closed from inside the
      # program; a top-level call closes it on the host (one callback fewer).
      reporter.finish(out.num_steps_taken, out.last_loss)
    state = out.state
    diverged = jnp.zeros((), bool)
    if spec.max_nonfinite is not None:
      diverged = state.num_consecutive_nonfinite >= spec.max_nonfinite
    return FitResult(
        params=state.params, trace=out.trace, state=state,
        model_params=None if spec.model_params is None else state.model_params,
        num_steps_taken=out.num_steps_taken, converged=state.converged,
        num_nonfinite=state.num_nonfinite - state0.num_nonfinite,
        diverged=diverged, trace_mask=out.mask,
        skipped=out.skipped), (loss0, out.last_loss)

  return _Program(jax.jit(alg.init), jax.jit(run), reporter)


def _program(spec, num_steps, trace_fn, trace_is_loss, settings,
             check_init) -> _Program:
  """The program of this fit; a top-level call reuses an identical one."""
  make = lambda: _make_program(spec, num_steps, trace_fn, trace_is_loss,
                               settings, check_init)
  if not check_init:  # under an outer trace: the caller's jit caches
    return make()
  objects = (spec.target, spec.surrogate, spec.optimizer, spec.loss,
             spec.criterion, trace_fn, getattr(settings, "file", None))
  static = (num_steps, spec.sample_size, spec.n_rows, spec.batch_size,
            spec.num_shards, spec.skip_nonfinite, spec.max_nonfinite,
            trace_is_loss, None if settings is None else settings._replace(
                file=None), compile_cache.signature(spec.model_params),
            compile_cache.signature(spec.data_spec))
  return compile_cache.cached(objects + static, make)


def _check_start(spec, key, init_params, init_state) -> Optional[Params]:
  """Checks `init_params` / `init_state`; returns the params to start from."""
  if init_state is not None:
    if init_params is not None:
      raise ValueError("give init_params or init_state, not both.")
    if not isinstance(init_state, VIState):
      raise TypeError("init_state must be a VIState (a previous "
                      f"FitResult.state); got {type(init_state).__name__}.")
    vv.matching_tree(
        "init_state", jax.eval_shape(_algorithm(spec)[0].init, key),
        init_state, "does not match this fit's loop state (same surrogate, "
        "optimizer, model_params, data and convergence_criterion are needed "
        "to resume)")
    return init_state.params
  if init_params is not None:
    vv.surrogate_params("init_params", spec.surrogate, key, init_params)
  return init_params


def _resolve_trace_fn(trace_fn) -> tuple[Callable, bool]:
  if trace_fn is None or trace_fn is _default_trace_fn:
    return _default_trace_fn, True
  return callable_arg("trace_fn", trace_fn,
                      "None or a callable TraceableQuantities -> pytree"), False


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
  over keys (independent restarts in one compile, see `vi_jax.stochastic.restarts`) and
  `jax.grad` (the scan path; a while loop is not reverse-differentiable).

  The key of iteration t is `fold_in(split(key)[1], t)`, so N steps then M
  steps resumed from `result.state` (`init_state=`) with the same key give
  bit for bit the params of one N + M run. On CPU, Threefry keys are
  rewrapped (`vi_jax._src.rng`) so that their random bits, identical to
  `jax.random`'s, compile to one fused kernel instead of a rolled loop per
  step.

  Args:
    target_log_prob_fn: unnormalized log density of ONE draw, called as
      `f(*z)` (tuple/list z), `f(**z)` (dict z) or `f(z)` (array z); returns a
      scalar. vi_jax vmaps it over draws. With `model_params` the model params
      come first: `f(model_params, *z)`; with `data` the step's
      `vi_jax.stochastic.minibatch.Batch` comes next: `f([model_params,] batch, *z)`.
    surrogate: a `vi_jax.surrogates.Surrogate`.
    optimizer: an optax `GradientTransformation` (e.g. `optax.adam(1e-2)`, or
      with a schedule).
    num_steps: Python int >= 1, the maximum number of iterations.
    key: a single PRNG key; split once for init and folded in per step.
    sample_size: Python int >= 1, Monte Carlo draws per step.
    loss: a `LossFn` (default: `vi_jax.objectives.losses.negative_elbo()`).
    trace_fn: `TraceableQuantities -> pytree` recorded every step; default
      records the loss.
    convergence_criterion: a `vi_jax.stochastic.convergence.ConvergenceCriterion`
      (`loss_not_decreasing`, `relative_params_change`, `relative_loss_change`
      or your own); the loop stops after the step at which it fires.
    init_params: optional starting params (structure of `surrogate.init(key)`).
    init_state: a previous `FitResult.state` to resume from (the whole loop
      state: params, optimizer, step, criterion, minibatch and model params).
    model_params: initial model params (pytree of float arrays), learned
      jointly with the surrogate (variational EM: Edward's KLqp with model
      variables, the TFP GP example); returned in `FitResult.model_params`.
    data: a data pytree with leading [N] rows (see `vi_jax.stochastic.minibatch`); may be
      sharded over devices (`vi_jax.stochastic.sharding.shard_data`).
    batch_size: rows per step, drawn without replacement; the target scales its
      likelihood by `batch.scale = N / batch_size`. None: all rows.
    num_shards: row blocks for per-shard drawing; use the number of devices the
      data is sharded over (keep it fixed to get the same draws on 1 device).
    progress_bar: None (on when stderr is a TTY, the fit is not traced by
      an outer jit/vmap and there is one process), True, False or a
      `vi_jax.stochastic.progress.ProgressBar(every, file, desc)`. Off means no callback
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
  num_steps = positive_int("num_steps", num_steps)
  vv.prng_key(key)
  spec = _validate(
      target_log_prob_fn, surrogate, optimizer, sample_size=sample_size,
      loss=loss, model_params=model_params, data=data, batch_size=batch_size,
      num_shards=num_shards, convergence_criterion=convergence_criterion,
      skip_nonfinite=skip_nonfinite,
      max_consecutive_nonfinite=max_consecutive_nonfinite)
  trace_fn, trace_is_loss = _resolve_trace_fn(trace_fn)
  check_target_on_draw(
      spec.target, spec.surrogate, key,
      _check_start(spec, key, init_params, init_state), spec.model_params,
      spec.data_spec, check_scale=spec.data_spec is not None and
      spec.batch_size < spec.n_rows)
  if progress_bar is None and (is_traced(key) or jax.process_count() > 1):
    # Default off inside an outer jit/vmap, and with several processes (whose
    # stderr may differ in being a TTY, yet all must compile one program).
    progress_bar = False
  settings = progress.resolve_progress_bar(progress_bar)
  # The initial loss is checked (and the program cached) only for a top-level
  # call: under an outer jit/vmap/grad it could not raise anyway.
  check_init = not under_transformation()
  program = _program(spec, num_steps, trace_fn, trace_is_loss, settings,
                     check_init)
  init_key, loop_key = jax.random.split(key)
  if init_state is None:
    # Initialized in a program of its own, so that a fresh fit and a resumed
    # one run the same compiled loop (bit-identical resumption).
    init_state = program.init(init_key, init_params, model_params)
  result, (loss0, last_loss) = program.run(loop_key, init_state, data)
  _host_checks(program.reporter, result, loss0, last_loss, spec, data,
               check_init)
  return result


def _host_checks(reporter, result, loss0, last_loss, spec, data,
                 check_init) -> None:
  """After a top-level run: close the bar, then raise or warn honestly."""
  if reporter is not None:
    jax.effects_barrier()
    if check_init and not is_traced(last_loss):
      reporter.host(result.num_steps_taken, last_loss, True)
    reporter.host.close()
  if not check_init or is_traced(loss0):
    return
  if not bool(jnp.isfinite(loss0)):
    where = (data_note(data) if data is not None and nonfinite_rows(
        data).any() else " Check target_log_prob_fn at the surrogate's "
             "initial draws (supports, bijectors, init_params / model_params).")
    raise FloatingPointError(
        f"vi.fit: the loss at the initial params is {float(loss0)} (not "
        f"finite), so the loop was not run.{where}")
  message = skip_report(result.num_nonfinite, result.skipped,
                        result.diverged, result.num_steps_taken,
                        spec.max_nonfinite, data)
  if message and is_main_process():  # the raise above stays on every process
    warnings.warn(message, RuntimeWarning, stacklevel=3)
