"""Multi-device and multi-process data parallelism (`jax.sharding`).

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

Several processes (JAX's multi-controller runtime, `jax.distributed`): every
process calls `jax.distributed.initialize(...)` first, holds only its own
rows, and runs the very same program (SPMD):

    jax.distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=i)
    data = vi.sharding.shard_data((x_i, y_i))   # this process's rows only
    result = vi.fit(target, q, opt, 1000, key=jax.random.key(0), data=data,
                    batch_size=512, num_shards=vi.sharding.num_devices(data),
                    progress_bar=False)  # the same on every process

The global data are the processes' rows stacked in process order (process
0's rows first), one block per device, so the fit equals a one-process fit
on the stacked rows with the same `num_shards`. Every process must build the
same program (the same arguments, `progress_bar` included: a bar compiled
into one process only desynchronizes the collectives). Params and the loop state
come back replicated on every process; `vi.checkpoint.save(...,
format="orbax")` writes them from all processes together.
"""

from typing import Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from vi_jax._src.types import PyTree
from vi_jax.model.subsampling import num_rows

__all__ = ["data_mesh", "shard_data", "num_devices", "is_main_process"]

DATA_AXIS = "data"


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D `Mesh` over `devices` with axis name "data".

  Args:
    devices: the devices, in mesh order (default: every process's devices,
      `jax.devices()` ordered by process index, so that each process's
      devices hold one contiguous block of rows).

  Returns:
    `Mesh(devices, ("data",))`.
  """
  if devices is None:  # a stable sort: one process keeps jax.devices()' order
    devices = sorted(jax.devices(), key=lambda d: d.process_index)
  return Mesh(np.array(list(devices)), (DATA_AXIS,))


def shard_data(data: PyTree, mesh: Optional[Mesh] = None) -> PyTree:
  """Places every leaf's leading [N] axis over the mesh's "data" axis.

  With one process, `data` holds all N rows. With several (after
  `jax.distributed.initialize`), every process calls `shard_data` with its
  own rows (the same count on every process) and gets one global array
  whose rows are the processes' rows in process order
  (`jax.make_array_from_process_local_data`); no rows cross processes.

  Args:
    data: pytree of arrays with a common leading axis: all [N] rows (one
      process) or this process's [N / num_processes] rows (several), divisible
      by the number of this process's devices on the data axis.
    mesh: a mesh with a "data" axis (default `data_mesh()`).

  Returns:
    The data as global jax arrays of [N] rows with
    `NamedSharding(mesh, P("data"))`.

  Raises:
    ValueError: the rows are not divisible by the (process-local) devices of
      the mesh's data axis, or processes pass different numbers of rows.
  """
  mesh = data_mesh() if mesh is None else mesh
  n = num_rows(data)
  sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  if jax.process_count() == 1:
    d = mesh.shape[DATA_AXIS]
    if n % d:
      raise ValueError(f"data has N={n} rows, not divisible by the {d} "
                       "devices of the mesh's data axis.")
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), data)
  d = len(sharding.addressable_devices)
  if not d or n % d:
    raise ValueError(
        f"process {jax.process_index()}'s data has {n} rows, not divisible by "
        f"its {d} devices on the mesh's data axis.")
  counts = np.asarray(multihost_utils.process_allgather(np.int32(n))).ravel()
  if np.any(counts != n):
    raise ValueError("every process must pass the same number of rows to "
                     f"shard_data; got {counts.tolist()} (by process).")
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      data)


def num_devices(data: PyTree) -> int:
  """The number of devices the first leaf of `data` is laid out over."""
  leaf = jax.tree_util.tree_leaves(data)[0]
  return len(leaf.sharding.device_set) if hasattr(leaf, "sharding") else 1


def is_main_process() -> bool:
  """True on process 0 (and when there is one process): draw bars, warn, log."""
  return jax.process_index() == 0
