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

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax._types import Array, PyTree, TargetLogProbFn

__all__ = ["call_target", "batched_log_prob", "check_target"]


def call_target(target_log_prob_fn: TargetLogProbFn, z: PyTree) -> Array:
  """Calls `target_log_prob_fn` on one draw with TFP's convention.

  Args:
    target_log_prob_fn: the user's log density of one draw.
    z: one draw: a dict (called as `f(**z)`), a tuple/list (`f(*z)`), or an
      array (`f(z)`).

  Returns:
    What the target returns (a scalar for a well-formed target).
  """
  if isinstance(z, dict):
    return target_log_prob_fn(**z)
  if isinstance(z, (tuple, list)):
    return target_log_prob_fn(*z)
  return target_log_prob_fn(z)


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
    from `vmap(value_and_grad(log_prob_fn))` on the materialized draws. Latents of integer dtype (discrete)
    fall back to plain `vmap` (they carry no gradient).
  """

  plain = jax.vmap(log_prob_fn, in_axes=(0, None))
  value_and_grads = jax.vmap(
      jax.value_and_grad(log_prob_fn, argnums=(0, 1)), in_axes=(0, None))

  @jax.custom_jvp
  def fused(z, extra):
    return plain(z, extra)

  @fused.defjvp
  def fused_jvp(primals, tangents):
    z, extra = primals
    dz, dextra = tangents
    value, (gz, gextra) = value_and_grads(materialize(z), extra)
    n = value.shape[0]
    tangent = jnp.zeros((n,), value.dtype)
    # z leaves and their gradients are batched [n, ...]; extra is unbatched,
    # its per-draw gradients are [n, ...].
    pairs = list(zip(jax.tree_util.tree_leaves(gz),
                     jax.tree_util.tree_leaves(dz)))
    pairs += [(g, jnp.broadcast_to(d, g.shape)) if d.dtype != jax.dtypes.float0
              else (g, d) for g, d in zip(jax.tree_util.tree_leaves(gextra),
                                          jax.tree_util.tree_leaves(dextra))]
    for g, d in pairs:
      if d.dtype == jax.dtypes.float0:
        continue
      tangent = tangent + jnp.sum(jnp.reshape(g * d, (n, -1)),
                                  axis=1).astype(value.dtype)
    return value, tangent

  def batched(z, extra=()):
    leaves = jax.tree_util.tree_leaves((z, extra))
    if all(_is_float(l) for l in leaves):
      return fused(z, extra)
    return plain(z, extra)

  return batched


def check_target(target_log_prob_fn: TargetLogProbFn, z_one: PyTree,
                 extra_call: Callable | None = None,
                 draw: Callable | None = None, draw_args: tuple = ()) -> None:
  """Checks, with `jax.eval_shape` (no compilation), that the target is scalar.

  Args:
    target_log_prob_fn: the user's target.
    z_one: a ShapeDtypeStruct pytree (or arrays) for ONE draw; ignored when
      `draw` is given.
    extra_call: optional `(z) -> value` used instead of `call_target`.
    draw: optional `(*draw_args) -> z`, one draw, traced in the same
      `eval_shape` as the target (one trace of the surrogate's sampler instead
      of one for the draw's shapes and another for the check).
    draw_args: the (abstract or concrete) arguments of `draw`.

  Raises:
    ValueError: if the target raises on a draw of the surrogate's shape, or
      returns something other than one scalar. Errors raised by `draw` itself
      propagate unchanged.
  """
  call = extra_call or (lambda z: call_target(target_log_prob_fn, z))
  shapes = {}

  def probe(*args):
    z = draw(*args) if draw is not None else args[0]
    shapes["z"] = jax.tree_util.tree_map(lambda s: tuple(jnp.shape(s)), z)
    return call(z)

  try:
    out = jax.eval_shape(probe, *(draw_args if draw is not None else (z_one,)))
  except Exception as e:  # pylint: disable=broad-except
    if "z" not in shapes:  # the draw failed, not the target
      raise
    raise ValueError(
        "target_log_prob_fn failed on one draw of the surrogate, with latents "
        f"of shapes {shapes['z']} (called as f(*z) for tuples, f(**z) for "
        f"dicts, f(z) for arrays): {type(e).__name__}: {e}") from e
  leaves = jax.tree_util.tree_leaves(out)
  if len(leaves) != 1 or np.prod(leaves[0].shape) != 1 or leaves[0].shape:
    raise ValueError(
        "target_log_prob_fn must return a scalar for one draw (vi_jax vmaps it "
        f"over samples); it returned {jax.tree_util.tree_map(lambda s: s.shape, out)}.")
