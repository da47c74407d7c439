"""Pytree-of-bijectors plumbing.

A surrogate over a pytree of latents works on one unconstrained vector
`u: [*batch, dim]`. `latent_space(event_shape, bijector)` describes how that
vector splits into one unconstrained array per latent and how each latent's
bijector maps it onto that latent's support, summing log-det-Jacobians.

Bijectors are distrax bijectors, or TFP-on-JAX bijectors given directly or
wrapped by `distrax.as_bijector` (inference_gym's `default_event_space_bijector`
and TFP JointDistributions hand out TFP bijectors). Shape-changing TFP bijectors
(`FillScaleTriL`, `IteratedSigmoidCentered`, ...) are supported: the
unconstrained shape of a latent is the bijector's `inverse_event_shape`.

The constraint helpers (`positive`, `interval`, `unit_interval`, `simplex`,
`correlation_cholesky`, `scale_tril`) return the usual TFP-on-JAX bijector for
each support, as NumPyro's `biject_to` and Stan's transforms do.
"""

from typing import Any, Callable, Hashable, NamedTuple, Sequence

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_probability.substrates.jax as tfp

from vi_jax._src.types import Array, PyTree

tfb = tfp.bijectors

__all__ = [
    "LatentSpace",
    "latent_space",
    "is_bijector",
    "is_shape",
    "positive",
    "interval",
    "unit_interval",
    "simplex",
    "scale_tril",
    "correlation_cholesky",
]

Shape = tuple[int, ...]


def is_shape(x: Any) -> bool:
  """True when `x` is one event shape: an int, a sequence of ints, a TensorShape."""
  if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
    return True
  if hasattr(x, "as_list") and hasattr(x, "rank"):  # TensorShape
    return True
  if isinstance(x, (tuple, list)) and not hasattr(x, "_fields"):
    return all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
               for d in x)
  return False


def _as_shape(x: Any) -> Shape:
  if isinstance(x, (int, np.integer)):
    return (int(x),)
  if hasattr(x, "as_list"):
    return tuple(int(d) for d in x.as_list())
  return tuple(int(d) for d in x)


def is_bijector(x: Any) -> bool:
  """True for a distrax bijector or a TFP-on-JAX bijector."""
  return isinstance(x, (distrax.Bijector, tfb.Bijector))


def _to_distrax(b: Any) -> distrax.Bijector | None:
  # An identity bijector (TFP's, as inference_gym hands out for unconstrained
  # latents) is dropped: no ops are traced for it and its log-det is 0.
  if b is None or isinstance(b, tfb.Identity):
    return None
  if isinstance(b, tfb.Bijector):
    return distrax.as_bijector(b)
  return b


def _unconstrained_shape(b: distrax.Bijector | None, shape: Shape) -> Shape:
  """The shape of the unconstrained array that `b` maps onto `shape`."""
  tfp_b = getattr(b, "_tfp_bijector", None)
  if tfp_b is not None:
    return _as_shape(tfp_b.inverse_event_shape(shape))
  return shape


def _is_bijector_leaf(x: Any) -> bool:
  return x is None or is_bijector(x)


class LatentSpace(NamedTuple):
  """How one unconstrained vector maps onto a pytree of latents.

  Attributes:
    dim: Python int, the length of the unconstrained vector.
    event_shape: the normalized event shape: a shape tuple, or a pytree of them.
    unconstrained_shapes: list of unconstrained shapes, one per latent leaf.
    unflatten: `u: [*batch, dim] -> pytree` of unconstrained leaves
      `[*batch, *unconstrained_shape]`.
    flatten: the inverse of `unflatten`.
    forward_and_log_det: `u: [n, dim] -> (z, ldj)`: z a pytree with leading
      `[n]` in each latent's support, `ldj: [n]` the summed log|det J|.
    inverse_and_log_det: `z (leading [n]) -> (u: [n, dim], ildj: [n])`.
    batch_shape: `z -> batch shape` of a pytree of latents.
    is_identity: True when no latent has a bijector.
    key: hashable `(event_shape structure, shapes, bijector structure,
      bijectors)`; two spaces are equal, and hash alike, when their keys are
      (the same shapes and the same bijector objects), so a `LatentSpace` can
      key a compiled program.
  """
  dim: int
  event_shape: PyTree
  unconstrained_shapes: list
  unflatten: Callable[[Array], PyTree]
  flatten: Callable[[PyTree], Array]
  forward_and_log_det: Callable[[Array], tuple[PyTree, Array]]
  inverse_and_log_det: Callable[[PyTree], tuple[Array, Array]]
  batch_shape: Callable[[PyTree], tuple]
  is_identity: bool
  key: Hashable

  def __eq__(self, other):
    return isinstance(other, LatentSpace) and self.key == other.key

  def __ne__(self, other):
    return not self == other

  def __hash__(self):
    return hash(self.key)


def _check_event_shape(event_shape: Any) -> None:
  leaves = jax.tree_util.tree_leaves(event_shape, is_leaf=is_shape)
  if not leaves or not all(is_shape(l) for l in leaves):
    raise ValueError(
        "event_shape must be a shape (a tuple of ints) or a pytree (dict, "
        f"tuple, list) of shapes; got {event_shape!r}.")
  for l in leaves:
    if any(int(d) < 0 for d in _as_shape(l)):
      raise ValueError(f"event_shape has a negative dimension: {event_shape!r}.")


def latent_space(event_shape: Any, bijector: Any = None) -> LatentSpace:
  """Builds the flat-vector <-> pytree-of-latents plumbing.

  Every function that takes `(event_shape, bijector)` builds its space here,
  so each also accepts a `LatentSpace` built once (with `bijector=None`).

  Args:
    event_shape: a shape (`()`, `(3,)`, `[2, 2]`, an int, a TensorShape) or a
      pytree (dict, tuple, namedtuple, list; nested) of shapes; or a
      `LatentSpace`, returned as it is.
    bijector: None (identity on every latent), one bijector (applied to every
      latent), or a pytree of bijectors (or None leaves) with the structure of
      `event_shape`. Each maps the unconstrained reals onto its latent's
      support.

  Returns:
    A `LatentSpace`.

  Raises:
    ValueError: if `event_shape` is not a shape or pytree of shapes, if
      `bijector` is neither None, a bijector nor a pytree of bijectors matching
      `event_shape`'s structure, or if a bijector's inverse event shape cannot be
      determined; or a `LatentSpace` given with a bijector.
  """
  if isinstance(event_shape, LatentSpace):
    if bijector is not None:
      raise ValueError("bijector must be None when event_shape is a "
                       "LatentSpace (the space holds its bijectors).")
    return event_shape
  _check_event_shape(event_shape)
  shape_leaves, treedef = jax.tree_util.tree_flatten(event_shape,
                                                     is_leaf=is_shape)
  shapes = [_as_shape(s) for s in shape_leaves]
  bijs = [_to_distrax(b) for b in _bijector_leaves(bijector, event_shape,
                                                   len(shapes))]
  ushapes = [_unconstrained_shape(b, s) for b, s in zip(bijs, shapes)]
  sizes = [int(np.prod(s, dtype=np.int64)) for s in ushapes]
  offsets = np.cumsum([0] + sizes)
  is_single = is_shape(event_shape)

  def leaves(z):
    return [z] if is_single else treedef.flatten_up_to(z)

  def tree(leaf_list):
    return leaf_list[0] if is_single else jax.tree_util.tree_unflatten(
        treedef, leaf_list)

  def unflatten(u):
    batch = u.shape[:-1]
    # One split (its transpose is one concatenate), not a slice per latent
    # (whose transposes are a pad and an add per latent).
    pieces = (jnp.split(u, [int(o) for o in offsets[1:-1]], axis=-1)
              if len(ushapes) > 1 else [u])
    return tree([p.reshape(batch + ushapes[i]) for i, p in enumerate(pieces)])

  def batch_shape(z):
    first = jnp.shape(leaves(z)[0])
    return tuple(first[:len(first) - len(shapes[0])])

  def flatten(u_tree):
    u_leaves = leaves(u_tree)
    batch = jnp.shape(u_leaves[0])[:jnp.ndim(u_leaves[0]) - len(ushapes[0])]
    return jnp.concatenate(
        [jnp.reshape(l, batch + (-1,)) for l in u_leaves], axis=-1)

  def forward_and_log_det(u):
    z_leaves, ldj = _map_leaves(bijs, leaves(unflatten(u)), "forward_and_log_det")
    return tree(z_leaves), jnp.broadcast_to(
        jnp.asarray(ldj, u.dtype), u.shape[:1])

  def inverse_and_log_det(z):
    z_leaves = leaves(z)
    n = jnp.shape(z_leaves[0])[0]
    u_leaves, ildj = _map_leaves(bijs, z_leaves, "inverse_and_log_det")
    u = jnp.concatenate([jnp.reshape(l, (n, -1)) for l in u_leaves], axis=-1)
    return u, jnp.broadcast_to(jnp.asarray(ildj, u.dtype), (n,))

  shapes_tree = jax.tree_util.tree_unflatten(treedef, shapes)
  return LatentSpace(dim=int(offsets[-1]), event_shape=shapes_tree,
                     unconstrained_shapes=ushapes, unflatten=unflatten,
                     flatten=flatten, forward_and_log_det=forward_and_log_det,
                     inverse_and_log_det=inverse_and_log_det,
                     batch_shape=batch_shape,
                     is_identity=all(b is None for b in bijs),
                     key=_space_key(event_shape, bijector))


def _space_key(event_shape: Any, bijector: Any) -> Hashable:
  """Hashable (event_shape, bijector): structures, shapes, bijector objects."""
  shapes, shape_def = jax.tree_util.tree_flatten(event_shape, is_leaf=is_shape)
  leaves, bij_def = jax.tree_util.tree_flatten(bijector,
                                               is_leaf=_is_bijector_leaf)
  return (shape_def, tuple(_as_shape(s) for s in shapes), bij_def,
          tuple(leaves))


def _bijector_leaves(bijector: Any, event_shape: Any, num_latents: int) -> list:
  """One bijector (or None) per latent leaf of `event_shape`, checked."""
  if bijector is None or is_bijector(bijector):
    return [bijector] * num_latents
  bij_paths, bij_leaves = _paths_and_leaves(bijector, _is_bijector_leaf)
  shape_paths, _ = _paths_and_leaves(event_shape, is_shape)
  if bij_paths != shape_paths or not all(
      _is_bijector_leaf(b) for b in bij_leaves):
    raise ValueError(
        "bijector must be None, one bijector, or a pytree of bijectors with "
        "the structure of event_shape; event_shape has latents "
        f"{_fmt_paths(shape_paths)} but bijector has "
        f"{_fmt_paths(bij_paths)} (leaves: "
        f"{[type(b).__name__ for b in bij_leaves]}).")
  return bij_leaves


def _map_leaves(bijs: list, x_leaves: list, method: str) -> tuple[list, Any]:
  """Applies each bijector's `method` vmapped over the leading axis.

  Returns the mapped leaves (a None bijector passes its leaf through) and
  the summed log-det-Jacobian `[n]` (0. when every bijector is None).
  """
  y_leaves, ldj = [], 0.
  for b, x in zip(bijs, x_leaves):
    if b is None:
      y_leaves.append(x)
      continue
    y, l = jax.vmap(getattr(b, method))(x)
    y_leaves.append(y)
    ldj = ldj + jnp.sum(l.reshape(l.shape[:1] + (-1,)), axis=-1)
  return y_leaves, ldj


def _paths_and_leaves(tree, is_leaf):
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return [tuple(str(k) for k in p) for p, _ in flat], [l for _, l in flat]


def _fmt_paths(paths: Sequence[tuple]) -> str:
  return "[" + ", ".join("".join(p) or "<root>" for p in paths) + "]"


# Constraint helpers: the TFP-on-JAX bijector for each common support.


def positive() -> tfb.Bijector:
  """R -> (0, inf) by softplus (NumPyro's `softplus_positive`, TFP's default)."""
  return tfb.Softplus()


def interval(low: float, high: float) -> tfb.Bijector:
  """R -> (low, high) by a scaled, shifted sigmoid (Stan's lower/upper bound)."""
  return tfb.Sigmoid(low=low, high=high)


def unit_interval() -> tfb.Bijector:
  """R -> (0, 1) by the logistic sigmoid."""
  return tfb.Sigmoid()


def simplex() -> tfb.Bijector:
  """R^(K-1) -> the K-simplex (TFP's IteratedSigmoidCentered, Stan's stick-breaking)."""
  return tfb.IteratedSigmoidCentered()


def scale_tril() -> tfb.Bijector:
  """R^(n(n+1)/2) -> lower-triangular matrices with positive diagonal."""
  return tfb.FillScaleTriL()


def correlation_cholesky() -> tfb.Bijector:
  """R^(n(n-1)/2) -> Cholesky factors of correlation matrices (LKJ support)."""
  return tfb.CorrelationCholesky()
