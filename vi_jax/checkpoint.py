"""Saving and loading the loop state (or any pytree of arrays) to disk.

The format is numpy's `.npz`: one array per leaf (`leaf_00000`, ...) plus the
leaves' key paths and the tree structure as strings. `load` takes a template
with the expected structure (e.g. `vi.build(...).init(key)`, a previous
`FitResult.state`, or `jax.eval_shape` of either) and checks that the stored
structure, key paths, shapes and dtypes match it before returning arrays laid
out in the template's tree. Typed PRNG key leaves are stored as their key data.
No pickling is involved (`allow_pickle=False`).
"""

import os
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax._types import PyTree

__all__ = ["save", "load"]

_FORMAT = "vi_jax.checkpoint/1"


def _describe(tree):
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  paths = [jax.tree_util.keystr(p) for p, _ in paths_leaves]
  return paths, [l for _, l in paths_leaves], str(treedef)


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def save(path: Union[str, os.PathLike], tree: PyTree) -> None:
  """Writes a pytree of arrays (e.g. a `VIState`) to `path` (.npz).

  Args:
    path: file path; numpy appends `.npz` if missing.
    tree: a pytree of arrays, e.g. `FitResult.state`.
  """
  paths, leaves, treedef = _describe(tree)
  arrays = {}
  for i, leaf in enumerate(leaves):
    if _is_key(leaf):
      leaf = jax.random.key_data(leaf)
    arrays[f"leaf_{i:05d}"] = np.asarray(leaf)
  np.savez(path, __format__=np.array(_FORMAT), __treedef__=np.array(treedef),
           __paths__=np.array(paths, dtype=np.str_), **arrays)


def load(path: Union[str, os.PathLike], like: PyTree) -> PyTree:
  """Reads a pytree saved by `save`, checked against the template `like`.

  Args:
    path: the `.npz` file.
    like: a pytree with the expected structure, shapes and dtypes (arrays or
      `jax.ShapeDtypeStruct`s).

  Returns:
    The stored pytree, with `like`'s structure, as jax arrays.

  Raises:
    ValueError: the file is not a vi_jax checkpoint, or its structure, key
      paths, shapes or dtypes differ from `like` (the message says which).
  """
  paths, leaves, treedef = _describe(like)
  with np.load(path, allow_pickle=False) as f:
    if "__format__" not in f or str(f["__format__"]) != _FORMAT:
      raise ValueError(f"{path} is not a vi_jax checkpoint.")
    stored_def = str(f["__treedef__"])
    stored_paths = [str(p) for p in f["__paths__"]]
    if stored_def != treedef or stored_paths != paths:
      raise ValueError(
          f"checkpoint {path} has a different tree structure than `like`:\n"
          f"  stored: {stored_def}\n  expected: {treedef}")
    out = []
    for i, (p, tmpl) in enumerate(zip(paths, leaves)):
      arr = f[f"leaf_{i:05d}"]
      if _is_key(tmpl):
        impl = jax.random.key_impl(tmpl) if not isinstance(
            tmpl, jax.ShapeDtypeStruct) else None
        out.append(jax.random.wrap_key_data(arr, impl=impl))
        continue
      shape, dtype = tuple(jnp.shape(tmpl)), jnp.result_type(tmpl)
      if tuple(arr.shape) != shape or arr.dtype != dtype:
        raise ValueError(
            f"checkpoint leaf {p} is {arr.dtype}{list(arr.shape)}; `like` "
            f"expects {dtype}{list(shape)}.")
      out.append(jnp.asarray(arr))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), out)
