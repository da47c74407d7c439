"""The fit loop: `build` gives the pure init/step pair, `fit` scans it under jit.

Keys are split outside the loop (`lax.scan(step, state, keys)`, as blackjax
does); the optax optimizer and the target are closed over and never cross the
`jit` boundary; only arrays do.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from vi_jax._types import Array, LossFn, Params, PRNGKey, PyTree
from vi_jax.losses import negative_elbo
from vi_jax.surrogates.base import check_sample_size
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
  """The whole loop state (a pytree; checkpointable)."""
  params: Params  # surrogate params pytree
  opt_state: optax.OptState
  step: Array  # shape=(), int32: number of updates taken


class TraceableQuantities(NamedTuple):
  """What one step exposes to `trace_fn` (tfp.math.minimize's convention)."""
  loss: Array  # shape=(), the loss evaluated at `params` (e.g. -ELBO)
  params: Params  # the params at which loss and grads were evaluated
  grads: Params  # d loss / d params, same structure as params
  step: Array  # shape=(), int32: index of this step


class VIAlgorithm(NamedTuple):
  """The init/step pair for custom loops (blackjax's VIAlgorithm shape).

  Attributes:
    init: `(key, init_params=None) -> VIState`.
    step: `(state, key) -> (state, TraceableQuantities)`.
  """
  init: Callable[..., VIState]
  step: Callable[[VIState, PRNGKey], tuple[VIState, TraceableQuantities]]


class FitResult(NamedTuple):
  """What `fit` returns."""
  params: Params  # optimized surrogate params
  trace: PyTree  # trace_fn outputs stacked with a leading [num_steps] axis
  state: VIState  # final loop state


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


def _one_draw_spec(surrogate, key, init_params):
  params = init_params if init_params is not None else jax.eval_shape(
      surrogate.init, key)
  z, _ = jax.eval_shape(lambda p: surrogate.sample_and_log_prob(p, key, 1),
                        params)
  return jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), z)


def build(target_log_prob_fn, surrogate, optimizer: optax.GradientTransformation,
          *, sample_size: int = 1, loss: Optional[LossFn] = None) -> VIAlgorithm:
  """The pure init/step pair that `fit` scans, for custom loops.

  Use it to write your own `lax.scan`, or to step from Python with callbacks
  (Bean Machine's `VariationalInfer.step()`, Edward's `update()`):

      alg = vi.build(log_p, surrogate, optax.adam(1e-2), sample_size=8)
      state = alg.init(jax.random.key(0))
      step = jax.jit(alg.step)
      for k in jax.random.split(jax.random.key(1), 1000):
        state, info = step(state, k)

  Args:
    target_log_prob_fn: log density of one draw (TFP's calling convention).
    surrogate: a `vi_jax.surrogates.Surrogate`.
    optimizer: an optax `GradientTransformation`, closed over.
    sample_size: Python int >= 1, Monte Carlo draws per step.
    loss: a `LossFn` (default `vi_jax.losses.negative_elbo()`).

  Returns:
    A `VIAlgorithm(init, step)`. `init(key, init_params=None)` returns a
    `VIState`; `step(state, key)` returns `(new_state, TraceableQuantities)`
    where the quantities are evaluated at the params before the update.

  Raises:
    TypeError / ValueError: bad `surrogate`, `optimizer` or `sample_size`.
  """
  _check_surrogate(surrogate)
  _check_optimizer(optimizer)
  sample_size = check_sample_size(sample_size)
  loss_fn = loss if loss is not None else negative_elbo()
  if not callable(loss_fn):
    raise TypeError(f"loss must be a callable LossFn; got {loss_fn!r}.")

  def objective(params, key):
    return loss_fn(target_log_prob_fn, surrogate, params, key, sample_size)

  value_and_grad = jax.value_and_grad(objective)

  def init(key, init_params=None):
    params = surrogate.init(key) if init_params is None else init_params
    return VIState(params=params, opt_state=optimizer.init(params),
                   step=jnp.zeros((), jnp.int32))

  def step(state, key):
    value, grads = value_and_grad(state.params, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    info = TraceableQuantities(loss=value, params=state.params, grads=grads,
                               step=state.step)
    return VIState(params, opt_state, state.step + 1), info

  return VIAlgorithm(init=init, step=step)


def fit(target_log_prob_fn, surrogate, optimizer: optax.GradientTransformation,
        num_steps: int, *, key: PRNGKey, sample_size: int = 1,
        loss: Optional[LossFn] = None,
        trace_fn: Optional[Callable[[TraceableQuantities], Any]] = None,
        convergence_criterion: Any = None,
        init_params: Optional[Params] = None) -> FitResult:
  """Fits `surrogate` to `target_log_prob_fn` by stochastic optimization.

  Runs `num_steps` optimizer steps in one `jax.lax.scan` inside one `jax.jit`;
  composes with an outer `jax.jit`, `jax.vmap` over keys (independent restarts
  in one compile) and `jax.grad`.

  Args:
    target_log_prob_fn: unnormalized log density of ONE draw, called as
      `f(*z)` (tuple/list z), `f(**z)` (dict z) or `f(z)` (array z); returns a
      scalar. vi_jax vmaps it over draws.
    surrogate: a `vi_jax.surrogates.Surrogate`.
    optimizer: an optax `GradientTransformation` (e.g. `optax.adam(1e-2)`, or
      with a schedule).
    num_steps: Python int >= 1.
    key: a single PRNG key; split once for init and once per step.
    sample_size: Python int >= 1, Monte Carlo draws per step.
    loss: a `LossFn` (default: `vi_jax.losses.negative_elbo()`).
    trace_fn: `TraceableQuantities -> pytree` recorded every step; default
      records the loss.
    convergence_criterion: reserved for early stopping; only None is supported
      in this version.
    init_params: optional starting params (structure of `surrogate.init(key)`).

  Returns:
    `FitResult(params, trace, state)`; `trace` has a leading `[num_steps]` axis.

  Raises:
    TypeError / ValueError (before compilation): `num_steps < 1`,
      `sample_size < 1`, a bad `key`, `surrogate` or `optimizer`, `init_params`
      whose structure or shapes differ from `surrogate.init(key)`, a target
      that fails or returns a non-scalar on one draw.
    NotImplementedError: a `convergence_criterion` was given.

  References:
    tfp.vi.fit_surrogate_posterior_stateless; blackjax.vi.meanfield_vi;
    numpyro.infer.SVI.run.
  """
  num_steps = _check_num_steps(num_steps)
  _check_key(key)
  if convergence_criterion is not None:
    raise NotImplementedError("convergence_criterion is not supported yet.")
  alg = build(target_log_prob_fn, surrogate, optimizer,
              sample_size=sample_size, loss=loss)
  if init_params is not None:
    _check_init_params(surrogate, key, init_params)
  check_target(target_log_prob_fn, _one_draw_spec(surrogate, key, init_params))
  trace_fn = trace_fn or _default_trace_fn
  init_key, loop_key = jax.random.split(key)

  def run(init_key, loop_key, init_params):
    state = alg.init(init_key, init_params)

    def body(state, k):
      state, tq = alg.step(state, k)
      return state, trace_fn(tq)

    state, trace = jax.lax.scan(body, state,
                                jax.random.split(loop_key, num_steps))
    return FitResult(params=state.params, trace=trace, state=state)

  return jax.jit(run)(init_key, loop_key, init_params)

