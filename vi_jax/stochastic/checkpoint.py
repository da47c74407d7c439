"""Saving and loading the loop state (or any pytree of arrays) to disk.

Two formats, the same checks:

- `format="npz"` (default, one process): numpy's `.npz`, one array per leaf
  (`leaf_00000`, ...) plus the leaves' key paths and the tree structure as
  strings. No pickling is involved (`allow_pickle=False`).
- `format="orbax"` (one or several processes): a checkpoint directory written
  with orbax-checkpoint, the JAX ecosystem's checkpoint library (the arrays
  with `StandardSave`, the key paths, tree structure, shapes and dtypes as
  JSON). Every process of a `jax.distributed` job calls `save` / `load` with
  the same tree (a collective); each writes and reads only its own shards, so
  arrays laid out over several processes' devices (e.g. the minibatch
  permutation of a fit on `vi.sharding.shard_data` data) are saved without
  gathering them. The directory must be visible to every process.

`load` takes a template with the expected structure (e.g.
`vi.build(...).init(key)`, a previous `FitResult.state`, or `jax.eval_shape`
of either) and checks that the stored structure, key paths, shapes and dtypes
match it before returning arrays laid out in the template's tree. Typed PRNG
key leaves are stored as their key data.
"""

import json
import os
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from vi_jax.stochastic import sharding as sharding_lib
from vi_jax._src.types import PyTree

__all__ = ["save", "load"]

_FORMAT = "vi_jax.stochastic.checkpoint/1"
_ORBAX_FORMAT = "vi_jax.stochastic.checkpoint.orbax/1"
_FORMATS = ("npz", "orbax")


def _describe(tree):
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  paths = [jax.tree_util.keystr(p) for p, _ in paths_leaves]
  return paths, [l for _, l in paths_leaves], str(treedef)


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _check_format(format: str) -> None:
  if format not in _FORMATS:
    raise ValueError(f"format must be one of {_FORMATS}; got {format!r}.")


def _check_structure(path, stored_def, stored_paths, treedef, paths) -> None:
  if stored_def != treedef or list(stored_paths) != list(paths):
    raise ValueError(
        f"checkpoint {path} has a different tree structure than `like`:\n"
        f"  stored: {stored_def}\n  expected: {treedef}")


def _check_leaf(p, shape, dtype, tmpl) -> None:
  want_shape, want_dtype = tuple(jnp.shape(tmpl)), jnp.result_type(tmpl)
  if tuple(shape) != want_shape or np.dtype(dtype) != want_dtype:
    raise ValueError(
        f"checkpoint leaf {p} is {np.dtype(dtype)}{list(shape)}; `like` "
        f"expects {want_dtype}{list(want_shape)}.")


def _wrap_key(data, tmpl):
  impl = (jax.random.key_impl(tmpl)
          if not isinstance(tmpl, jax.ShapeDtypeStruct) else None)
  return jax.random.wrap_key_data(data, impl=impl)


def save(path: Union[str, os.PathLike], tree: PyTree, *,
         format: str = "npz") -> None:
  """Writes a pytree of arrays (e.g. a `VIState`) to `path`.

  Args:
    path: with `format="npz"`, a file path (numpy appends `.npz` if missing);
      with `format="orbax"`, a directory, replaced if it exists.
    tree: a pytree of arrays, e.g. `FitResult.state`.
    format: "npz" (one process) or "orbax" (any number of processes; every
      process must call `save` with the same tree).

  Raises:
    ValueError: an unknown `format`.
  """
  _check_format(format)
  paths, leaves, treedef = _describe(tree)
  leaves = [jax.random.key_data(l) if _is_key(l) else l for l in leaves]
  if format == "orbax":
    _save_orbax(path, paths, leaves, treedef)
    return
  arrays = {f"leaf_{i:05d}": np.asarray(l) for i, l in enumerate(leaves)}
  np.savez(path, __format__=np.array(_FORMAT), __treedef__=np.array(treedef),
           __paths__=np.array(paths, dtype=np.str_), **arrays)


def load(path: Union[str, os.PathLike], like: PyTree, *,
         format: str = "npz") -> PyTree:
  """Reads a pytree saved by `save`, checked against the template `like`.

  Args:
    path: the `.npz` file (`format="npz"`) or the checkpoint directory
      (`format="orbax"`).
    like: a pytree with the expected structure, shapes and dtypes (arrays or
      `jax.ShapeDtypeStruct`s). With "orbax", a leaf whose `sharding` is a
      `NamedSharding` is restored with that layout; the others are replicated
      over `vi.sharding.data_mesh()` (every process's devices).
    format: "npz" or "orbax", as saved; with "orbax" every process must call
      `load`.

  Returns:
    The stored pytree, with `like`'s structure, as jax arrays.

  Raises:
    ValueError: an unknown `format`; the file is not a vi_jax checkpoint, or
      its structure, key paths, shapes or dtypes differ from `like` (the
      message says which).
  """
  _check_format(format)
  paths, leaves, treedef = _describe(like)
  if format == "orbax":
    out = _load_orbax(path, paths, leaves, treedef)
  else:
    out = _load_npz(path, paths, leaves, treedef)
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), out)


def _load_npz(path, paths, leaves, treedef) -> list:
  with np.load(path, allow_pickle=False) as f:
    if "__format__" not in f or str(f["__format__"]) != _FORMAT:
      raise ValueError(f"{path} is not a vi_jax checkpoint.")
    _check_structure(path, str(f["__treedef__"]),
                     [str(p) for p in f["__paths__"]], treedef, paths)
    out = []
    for i, (p, tmpl) in enumerate(zip(paths, leaves)):
      arr = f[f"leaf_{i:05d}"]
      if _is_key(tmpl):
        out.append(_wrap_key(arr, tmpl))
        continue
      _check_leaf(p, arr.shape, arr.dtype, tmpl)
      out.append(jnp.asarray(arr))
  return out


def _orbax():
  import orbax.checkpoint as ocp  # a heavy import, only when asked for
  return ocp


def _save_orbax(path, paths, leaves, treedef) -> None:
  ocp = _orbax()
  arrays = {f"leaf_{i:05d}": l for i, l in enumerate(leaves)}
  meta = {"format": _ORBAX_FORMAT, "treedef": treedef, "paths": paths,
          "shapes": [list(jnp.shape(l)) for l in leaves],
          "dtypes": [str(jnp.result_type(l)) for l in leaves]}
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(os.path.abspath(os.fspath(path)),
               ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                  meta=ocp.args.JsonSave(meta)), force=True)


def _load_orbax(path, paths, leaves, treedef) -> list:
  ocp = _orbax()
  path = os.path.abspath(os.fspath(path))
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    try:
      meta = ckptr.restore(path, ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except (FileNotFoundError, KeyError, ValueError, json.JSONDecodeError) as e:
      raise ValueError(f"{path} is not a vi_jax orbax checkpoint: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != _ORBAX_FORMAT:
      raise ValueError(f"{path} is not a vi_jax orbax checkpoint.")
    _check_structure(path, meta["treedef"], meta["paths"], treedef, paths)
    replicated = NamedSharding(sharding_lib.data_mesh(), PartitionSpec())
    abstract = {}
    for i, (p, tmpl) in enumerate(zip(paths, leaves)):
      spec = jax.eval_shape(jax.random.key_data, tmpl) if _is_key(tmpl) else tmpl
      if not _is_key(tmpl):
        _check_leaf(p, meta["shapes"][i], meta["dtypes"][i], tmpl)
      layout = getattr(tmpl, "sharding", None)
      if not isinstance(layout, NamedSharding):
        layout = replicated
      abstract[f"leaf_{i:05d}"] = jax.ShapeDtypeStruct(
          jnp.shape(spec), jnp.result_type(spec), sharding=layout)
    arrays = ckptr.restore(path, ocp.args.Composite(
        arrays=ocp.args.StandardRestore(abstract)))["arrays"]
  return [_wrap_key(arrays[f"leaf_{i:05d}"], tmpl) if _is_key(tmpl) else
          arrays[f"leaf_{i:05d}"] for i, tmpl in enumerate(leaves)]
