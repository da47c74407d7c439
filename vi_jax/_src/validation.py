"""Argument checks shared by every public function, so errors read the same.

Each check names the argument, says what was expected and what was given,
and runs on Python values before anything is traced or compiled. Integers:
a Python int, a NumPy integer or a concrete 0-d integer JAX array (anything
with `__index__` and no float dtype) is accepted; a bool, a float (even
`2.0`) or a traced value is a TypeError; a value out of range a ValueError.
"""

import operator
from typing import Any, Optional

import jax
import jax.numpy as jnp

from vi_jax._src.types import PyTree

__all__ = [
    "callable_arg",
    "float_pytree",
    "integer",
    "matching_tree",
    "optimizer",
    "optional_positive_int",
    "positive_int",
    "prng_key",
    "surrogate",
]


def integer(name: str, value: Any, *, minimum: int = 1,
            maximum: Optional[int] = None) -> int:
  """`value` as a Python int in `[minimum, maximum]`.

  Raises:
    TypeError: a bool, a non-integer or a traced value.
    ValueError: an integer out of range.
  """
  if isinstance(value, bool) or isinstance(value, jax.core.Tracer):
    index = None
  else:
    try:
      index = operator.index(value)
    except TypeError:
      index = None
  if index is None:
    bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
    raise TypeError(f"{name} must be a Python int {bound} (a NumPy or concrete "
                    f"JAX integer scalar is accepted); got {value!r}.")
  if index < minimum or (maximum is not None and index > maximum):
    bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
    raise ValueError(f"{name} must be {bound}; got {index}.")
  return index


def positive_int(name: str, value: Any) -> int:
  """`integer(name, value, minimum=1)`."""
  return integer(name, value, minimum=1)


def optional_positive_int(name: str, value: Any) -> Optional[int]:
  """None, or `positive_int(name, value)`."""
  return None if value is None else positive_int(name, value)


def callable_arg(name: str, value: Any, what: str = "callable") -> Any:
  """`value` if callable.

  Raises:
    TypeError: not callable (None included).
  """
  if not callable(value):
    raise TypeError(f"{name} must be {what}; got {value!r}.")
  return value


def float_pytree(name: str, tree: PyTree) -> PyTree:
  """`tree` if every leaf has a floating dtype.

  Raises:
    TypeError: a leaf of another dtype (an int leaf is the usual slip:
      `jnp.zeros(2, int)` or a list of Python ints).
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"{name} must be a pytree of float arrays; the leaf at "
          f"{jax.tree_util.keystr(path) or '(root)'} has dtype {dtype}.")
  return tree


def surrogate(surrogate) -> None:
  """Raises TypeError unless `surrogate` has the Surrogate functions."""
  for field in ("init", "sample_and_log_prob", "log_prob"):
    if not callable(getattr(surrogate, field, None)):
      raise TypeError(
          "surrogate must be a vi_jax.surrogates.Surrogate (a NamedTuple with "
          f"init, sample_and_log_prob, log_prob); got {type(surrogate).__name__}"
          f" without a callable {field!r}.")


def optimizer(optimizer) -> None:
  """Raises TypeError unless `optimizer` is an optax GradientTransformation."""
  if not (callable(getattr(optimizer, "init", None)) and
          callable(getattr(optimizer, "update", None))):
    raise TypeError(
        "optimizer must be an optax.GradientTransformation (with init and "
        f"update); got {type(optimizer).__name__}.")


def prng_key(key) -> None:
  """Raises TypeError / ValueError unless `key` is one PRNG key."""
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


def matching_tree(name, expected, given, hint) -> None:
  """Raises ValueError unless `given` has the structure and leaf shapes of
  `expected` (`hint` says what the argument must be)."""
  e_struct = jax.tree_util.tree_structure(expected)
  g_struct = jax.tree_util.tree_structure(given)
  if e_struct != g_struct:
    raise ValueError(f"{name} {hint}: expected the structure {e_struct}, got "
                     f"{g_struct}.")
  shape = lambda tree: jax.tree_util.tree_map(lambda x: tuple(jnp.shape(x)),
                                              tree)
  if shape(expected) != shape(given):
    raise ValueError(f"{name} {hint}: expected leaf shapes {shape(expected)}, "
                     f"got {shape(given)}.")


def surrogate_params(name: str, surrogate, key, params) -> None:
  """Raises unless `params` are float params shaped like `surrogate.init(key)`."""
  matching_tree(
      name, jax.eval_shape(surrogate.init, key), params,
      "must be params of this surrogate, shaped like surrogate.init(key) "
      "(e.g. full-rank params do not fit a mean-field surrogate)")
  float_pytree(name, params)
