"""Multi-device data parallelism on JAX's own runtime (`jax.sharding`).

Lay the data's leading [N] axis out over a 1-D device mesh with a "data"
axis; `vi.fit` is jit-compiled once and XLA's SPMD partitioner runs the
per-row likelihood on each device's rows and sums across devices (an
all-reduce), with params replicated. The same program runs on one device or
many:

    data = vi.sharding.shard_data((x, y))                 # all local devices
    result = vi.fit(target, q, opt, 1000, key=key, data=data, batch_size=512,
                    num_shards=vi.sharding.num_devices(data))

`num_shards` makes each step draw `batch_size / num_shards` rows from each
device's block of rows, so gathers stay local; keep it fixed (e.g. 4 on one
device) to draw the very same rows on a different device count. On CPU, test
with `XLA_FLAGS=--xla_force_host_platform_device_count=4` set before jax is
imported.
"""

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from vi_jax._types import PyTree
from vi_jax.minibatch import num_rows

__all__ = ["data_mesh", "shard_data", "num_devices"]

DATA_AXIS = "data"


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D `Mesh` over `devices` (default: all) with axis name "data"."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.array(devices), (DATA_AXIS,))


def shard_data(data: PyTree, mesh: Optional[Mesh] = None) -> PyTree:
  """Places every leaf's leading [N] axis over the mesh's "data" axis.

  Args:
    data: pytree of arrays with a common leading [N] axis; N must be divisible
      by the number of devices.
    mesh: a mesh with a "data" axis (default `data_mesh()`).

  Returns:
    The data as jax arrays with `NamedSharding(mesh, P("data"))`.

  Raises:
    ValueError: N not divisible by the number of devices on the data axis.
  """
  mesh = data_mesh() if mesh is None else mesh
  n = num_rows(data)
  d = mesh.shape[DATA_AXIS]
  if n % d:
    raise ValueError(f"data has N={n} rows, not divisible by the {d} devices "
                     "of the mesh's data axis.")
  sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), data)


def num_devices(data: PyTree) -> int:
  """The number of devices the first leaf of `data` is laid out over."""
  leaf = jax.tree_util.tree_leaves(data)[0]
  return len(leaf.sharding.device_set) if hasattr(leaf, "sharding") else 1
