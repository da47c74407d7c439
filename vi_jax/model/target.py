"""Calling a target log density: TFP's convention, validation, fused gradients.

`target_log_prob_fn` is written for ONE draw and called as `f(*z)` when z is a
tuple or list (namedtuples included), `f(**z)` when z is a dict, and `f(z)`
otherwise (tfp.vi.fit_surrogate_posterior's convention). vi_jax vmaps it over
the sample axis.

`batched_log_prob` returns the vmapped target whose derivative is defined by a
custom JVP: the tangent rule evaluates `jax.vmap(jax.value_and_grad(f))`, the
per-draw value and gradient in one pass, so a reparameterized loss costs the
bare kernel (the vmapped gradient of the target) plus the cheap chain rule
through the surrogate's sampling path. Because it is a JVP rule (not a VJP)
it stays differentiable to any order. The rule first materializes the draws
(`materialize`), so that XLA evaluates the sampler once per draw instead of
once per data element in every fusion of the target that reads them.
"""

import functools
import warnings
from typing import Any, Callable, NamedTuple

import jax
from jax.custom_derivatives import SymbolicZero
import jax.numpy as jnp

from vi_jax._src.types import Array, PyTree, TargetLogProbFn

__all__ = [
    "BoundTarget",
    "batched_log_prob",
    "batched_target",
    "call_target",
    "check_target",
    "check_target_on_draw",
    "check_target_on_space",
    "flat_log_density",
    "traced_once",
]


def call_target(target_log_prob_fn: TargetLogProbFn, z: PyTree,
                lead: tuple = ()) -> Array:
  """Calls `target_log_prob_fn` on one draw with TFP's convention.

  Args:
    target_log_prob_fn: the user's log density of one draw.
    z: one draw: a dict (called as `f(*lead, **z)`), a tuple/list
      (`f(*lead, *z)`), or an array (`f(*lead, z)`).
    lead: leading positional arguments (model params, a minibatch), see
      `BoundTarget`.

  Returns:
    What the target returns (a scalar for a well-formed target).
  """
  if isinstance(z, dict):
    return target_log_prob_fn(*lead, **z)
  if isinstance(z, (tuple, list)):
    return target_log_prob_fn(*lead, *z)
  return target_log_prob_fn(*lead, z)


def traced_once(target_log_prob_fn: TargetLogProbFn) -> TargetLogProbFn:
  """`target_log_prob_fn` as a `jax.jit`: traced once per input shape and
  dtype, however many places of one program call it.

  A run-once program calls the target in several places (L-BFGS's first
  evaluation and its line search, the Hessian, the evaluation draws), and
  tracing a TFP or inference_gym model in Python is slow
  (benchmarks/RESULTS.md, "Design measurements cited in the code"); the
  jit's trace is reused by every call with the same shapes (vmap and
  differentiation transform the traced jaxpr), and XLA inlines it. Same
  values, calling convention and transformations as the target itself.
  Build it once per program: each call makes a new jit with its own cache.

  Args:
    target_log_prob_fn: the log density of one draw (TFP's convention, see
      `call_target`); its arguments are `event_shape`-shaped arrays, any
      float dtype.

  Returns:
    A callable with the same signature and results (a scalar of the
    arguments' float dtype), composable with jit, vmap and grad, also of
    arrays the target closes over.

  Raises:
    Nothing when built; calls raise what the target raises, or JAX's
    tracer errors for a target that is not traceable (as any vi_jax program
    would).

  References:
    `jax.jit`'s tracing cache (keyed on the function and the arguments'
    shapes and dtypes).
  """
  return jax.jit(lambda *args, **kwargs: target_log_prob_fn(*args, **kwargs))


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def materialize(tree):
  """`tree` unchanged, computed once: XLA:CPU cannot fuse its producer into
  its consumers.

  XLA (CPU) fuses an elementwise producer (the normal sampler's inverse-erf
  polynomial, an affine map, a bijector) into every fusion that reads it. A
  consumer that is a reduction (the sum over draws of a gradient) or that
  reuses each value across many data elements (a gather as in item response
  theory, a broadcast against data) then recomputes the producer once per
  element in a scalar loop, in each such fusion. `optimization_barrier` is
  removed before fusion on CPU; a conditional's operands are materialized.
  On other backends (where fusion works differently and a conditional costs a
  device-to-host read of its predicate) `tree` is returned as is.
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  if jax.default_backend() != "cpu" or not leaves or not all(
      jnp.issubdtype(jnp.result_type(l), jnp.inexact) for l in leaves):
    return tree
  first = jnp.ravel(leaves[0])[0]
  # Identity when the first entry is a number; all-NaN when it is NaN (the
  # log density is NaN then anyway). Two different branches keep JAX and XLA
  # from forwarding the operands past the conditional.
  out = jax.lax.cond(first == first, lambda x: x,
                     lambda x: [l * jnp.nan for l in x], leaves)
  return jax.tree_util.tree_unflatten(treedef, out)


class BoundTarget(NamedTuple):
  """A target with its leading arguments bound: the one calling rule.

  `target_log_prob_fn` is called as `f([model_params,] [batch,] *z)`: model
  params first when they are learned, then the step's minibatch when there is
  data, then the draw by TFP's convention (`call_target`). `vi.fit` hands its
  loss a `BoundTarget`; calling it on one draw's latents evaluates the
  target, and `batched_target` passes `model_params` through the fused
  gradient's `extra` argument, so the loss differentiates the target with
  respect to them in the same pass as the draws.
  """
  fn: TargetLogProbFn  # the user's target_log_prob_fn
  model_params: Any = None  # pytree of float arrays, or None (not learned)
  batch: Any = None  # a vi_jax.stochastic.minibatch.Batch, or None (no data)

  def lead(self, model_params=None) -> tuple:
    """The leading arguments, with `model_params` in place of the bound ones."""
    mp = self.model_params if model_params is None else model_params
    return tuple(x for x, used in ((mp, self.model_params is not None),
                                   (self.batch, self.batch is not None)) if used)

  def __call__(self, *args, **kwargs):
    return self.fn(*self.lead(), *args, **kwargs)


def batched_target(target_log_prob_fn) -> Callable[[PyTree], Array]:
  """`z (leading [n]) -> log p: [n]`, the target vmapped with fused gradients.

  Differentiating it costs one `vmap(value_and_grad(target))`, the bare
  kernel; for a `BoundTarget` the gradient with respect to its model params
  comes from the same pass (they are the `extra` of `batched_log_prob`).
  """
  if isinstance(target_log_prob_fn, BoundTarget):
    bound = target_log_prob_fn
    batched = batched_log_prob(
        lambda z, mp: call_target(bound.fn, z, bound.lead(mp)))
    extra = bound.model_params if bound.model_params is not None else ()
    return lambda z: batched(z, extra)
  batched = batched_log_prob(lambda z, extra: call_target(target_log_prob_fn, z))
  return lambda z: batched(z, ())


def _map(fn, in_axes, *args):
  """`jax.vmap(fn, in_axes)(*args)`; over a batch of one, `fn` on the one
  draw with the axis added back to every output.

  XLA:CPU vectorizes an elementwise loop along its minor dimension; vmap over
  one draw makes that dimension 1 in every intermediate it batches (the
  logits `[rows, 1]` of a regression), and the loop then runs scalar: a
  transcendental such as a softplus costs about ten times more.
  """
  sizes = {jnp.shape(l)[0] for a, ax in zip(args, in_axes) if ax == 0
           for l in jax.tree_util.tree_leaves(a)}
  if sizes != {1}:
    return jax.vmap(fn, in_axes=in_axes)(*args)
  one = [jax.tree_util.tree_map(lambda x: x[0], a) if ax == 0 else a
         for a, ax in zip(args, in_axes)]
  return jax.tree_util.tree_map(lambda x: x[None], fn(*one))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _fused(log_prob_fn, z, extra):
  return _map(log_prob_fn, (0, None), z, extra)


def _fused_jvp(log_prob_fn, primals, tangents):
  """One `vmap(value_and_grad)` over the draws, differentiating only the
  arguments whose tangent is not a symbolic zero (a closed-over array that
  is not being differentiated costs nothing)."""
  z, extra = primals
  flat, treedef = jax.tree_util.tree_flatten((materialize(z), extra))
  flat_tangents = treedef.flatten_up_to(tangents)
  num_z = len(jax.tree_util.tree_leaves(z))
  live = tuple(i for i, t in enumerate(flat_tangents)
               if not isinstance(t, SymbolicZero))

  def one(*leaves):
    return log_prob_fn(*jax.tree_util.tree_unflatten(treedef, leaves))

  in_axes = [0] * num_z + [None] * (len(flat) - num_z)
  if not live:
    value = _map(one, in_axes, *flat)
    return value, jnp.zeros_like(value)
  value, grads = _map(jax.value_and_grad(one, argnums=live), in_axes, *flat)
  n = value.shape[0]
  tangent = jnp.zeros((n,), value.dtype)
  for i, g in zip(live, grads):
    # z's gradients and tangents are batched [n, ...]; extra's tangents are
    # unbatched and broadcast against the per-draw gradients [n, ...].
    tangent = tangent + jnp.sum(jnp.reshape(g * flat_tangents[i], (n, -1)),
                                axis=1).astype(value.dtype)
  return value, tangent


_fused.defjvp(_fused_jvp, symbolic_zeros=True)


def batched_log_prob(
    log_prob_fn: Callable[[PyTree, Any], Array]) -> Callable[[PyTree, Any],
                                                             Array]:
  """Vmaps a one-draw log density with a fused value-and-gradient derivative.

  Args:
    log_prob_fn: `(z, extra) -> scalar` for one draw `z`; `extra` is an
      unbatched pytree (e.g. model parameters, or `()`) that the derivative
      also covers.

  Returns:
    `(z, extra) -> [n]` for z with leading `[n]` on every leaf. Its value is
    `vmap(log_prob_fn)`; its JVP (and so its VJP under `jax.grad`) is computed
    from `vmap(value_and_grad(log_prob_fn))` on the materialized draws.
    Arrays that `log_prob_fn` closes over and that an outer `jax.grad`,
    `jax.jacfwd` or `jax.jit` may differentiate are hoisted into `extra` by
    `jax.closure_convert`, so the derivative covers them too (a prior
    hyperparameter learned by differentiating the loss). Latents of integer
    dtype (discrete) fall back to plain `vmap` (they carry no gradient).
  """

  def batched(z, extra=()):
    leaves = jax.tree_util.tree_leaves((z, extra))
    if not all(_is_float(l) for l in leaves):
      return _map(log_prob_fn, (0, None), z, extra)
    one = jax.tree_util.tree_map(lambda x: x[0], z)
    converted, consts = jax.closure_convert(log_prob_fn, one, extra)
    return _fused(lambda zz, ec: converted(zz, ec[0], *ec[1]), z,
                  (extra, tuple(consts)))

  return batched


def _reads(jaxpr, index: int) -> bool:
  """Whether input `index` of a jaxpr is used by any equation or output."""
  var = jaxpr.invars[index]
  return any(var is v for e in jaxpr.eqns for v in e.invars) or any(
      var is v for v in jaxpr.outvars)


def check_target(target_log_prob_fn: TargetLogProbFn, z_one: PyTree = None, *,
                 draw: Callable | None = None, draw_args: tuple = (),
                 model_params: Any = None, batch: Any = None,
                 check_scale: bool = False) -> None:
  """Checks, by tracing once (no compilation), that the target is scalar.

  The target is called by the one calling rule (`BoundTarget`):
  `f([model_params,] [batch,] *z)`.

  Args:
    target_log_prob_fn: the user's target.
    z_one: a ShapeDtypeStruct pytree (or arrays) for ONE draw; ignored when
      `draw` is given.
    draw: optional `(*draw_args) -> z`, one draw, traced with the target (one
      trace of the surrogate's sampler instead of one for the draw's shapes
      and another for the check).
    draw_args: the (abstract or concrete) arguments of `draw`.
    model_params: model params (or their ShapeDtypeStructs), or None.
    batch: a `vi_jax.stochastic.minibatch.Batch` of ShapeDtypeStructs, or None.
    check_scale: warn if the target never reads `batch.scale` (set when
      batch_size < N).

  Raises:
    ValueError: the target raises on a draw of the surrogate's shape, or
      returns anything but one float scalar (a dict or list holding one is
      refused too). Errors raised by `draw` itself propagate unchanged.

  Warns:
    UserWarning: a minibatch target that never reads `batch.scale` (its
      likelihood would count B rows as if they were all N: a posterior
      about N / B times too wide).
  """
  shapes = {}

  def probe(args, mp, b):
    z = draw(*args) if draw is not None else args
    shapes["z"] = jax.tree_util.tree_map(lambda s: tuple(jnp.shape(s)), z)
    return call_target(target_log_prob_fn, z,
                       BoundTarget(target_log_prob_fn, mp, b).lead())

  args = (draw_args if draw is not None else z_one, model_params, batch)
  try:
    closed, out = jax.make_jaxpr(probe, return_shape=True)(*args)
  except Exception as e:  # pylint: disable=broad-except
    if "z" not in shapes:  # the draw failed, not the target
      raise
    raise ValueError(
        "target_log_prob_fn failed on one draw of the surrogate, with latents "
        f"of shapes {shapes['z']} (called as f([model_params,] [batch,] *z) "
        f"for tuples, **z for dicts, z for arrays): {type(e).__name__}: {e}"
    ) from e
  if not isinstance(out, jax.ShapeDtypeStruct) or out.shape or not (
      jnp.issubdtype(out.dtype, jnp.floating)):
    raise ValueError(
        "target_log_prob_fn must return a scalar (float) for one draw (vi_jax "
        "vmaps it over samples); it returned "
        f"{jax.tree_util.tree_map(lambda s: (s.shape, str(s.dtype)), out)}.")
  if batch is not None and check_scale:
    scale = len(jax.tree_util.tree_leaves(args)) - 1  # Batch.scale is last
    if not _reads(closed.jaxpr, scale):
      warnings.warn(
          "target_log_prob_fn never reads batch.scale: with batch_size < N "
          "the minibatch log likelihood must be multiplied by batch.scale = "
          "N / batch_size (vi_jax.stochastic.minibatch.scaled_log_prob does it), or the "
          "posterior comes out about N / batch_size times too wide. Ignore "
          "this if the target scales its likelihood itself.", UserWarning,
          stacklevel=4)


def check_target_on_draw(target_log_prob_fn: TargetLogProbFn, surrogate: Any,
                         key: Any, params: Any = None, model_params: Any = None,
                         batch: Any = None, check_scale: bool = False) -> None:
  """`check_target` on one draw of `surrogate` (traced with the target).

  Args:
    target_log_prob_fn: the user's target.
    surrogate: a `vi_jax.surrogates.Surrogate`.
    key: a PRNG key for the draw.
    params: the surrogate params to draw at (None: `surrogate.init(key)`'s
      shapes).
    model_params: model params (arrays), or None.
    batch: a `vi_jax.stochastic.minibatch.Batch` of ShapeDtypeStructs, or None.
    check_scale: see `check_target`.
  """
  if params is None:
    params = jax.eval_shape(surrogate.init, key)

  def draw(p):
    z, _ = surrogate.sample_and_log_prob(p, key, 1)
    return jax.tree_util.tree_map(lambda x: x[0], z)

  mp = None if model_params is None else jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)),
      model_params)
  check_target(target_log_prob_fn, draw=draw, draw_args=(params,),
               model_params=mp, batch=batch, check_scale=check_scale)


def flat_log_density(target_log_prob_fn, space):
  """`x: [n, dim] -> [n]`: the target's log density in the unconstrained space.

  `log p(T(x)) + log|det J_T(x)|`, T the latents' bijectors.
  """

  def log_density(x):
    z, ldj = space.forward_and_log_det(x)
    log_p = jax.vmap(lambda zi: call_target(target_log_prob_fn, zi))(z)
    return log_p + ldj

  return log_density


def check_target_on_space(target_log_prob_fn, space, dtype) -> None:
  """Raises a ValueError naming `target_log_prob_fn` if it is not a scalar density."""
  if not callable(target_log_prob_fn):
    raise TypeError("target_log_prob_fn must be callable; got "
                    f"{type(target_log_prob_fn).__name__}.")
  check_target(target_log_prob_fn, None,
               draw=lambda x: jax.tree_util.tree_map(
                   lambda l: l[0], space.forward_and_log_det(x)[0]),
               draw_args=(jax.ShapeDtypeStruct((1, space.dim), dtype),))
