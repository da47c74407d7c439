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

from vi_jax._types import PyTree

__all__ = [
    "callable_arg",
    "float_pytree",
    "integer",
    "optional_positive_int",
    "positive_int",
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
