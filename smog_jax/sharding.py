"""The 1-D `data` mesh and the shardings of the train state and batches.

Data parallelism only: parameters, optimiser state and centroids are
replicated; batches and the memory bank are split along their example axis.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named `data` over `devices` (default: every global device)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Split along `axis` over the `data` mesh axis, the other axes whole."""
  return NamedSharding(mesh, P(*([None] * axis), DATA_AXIS))


def check_divisible(global_batch: int, mesh: Mesh, what: str = 'batch_size'):
  """Raises a clear error when a global batch cannot split over the mesh."""
  if global_batch % mesh.size:
    raise ValueError(
        f'{what}={global_batch} must be divisible by the number of devices '
        f'({mesh.size}); pick a multiple of {mesh.size} with '
        f'--config.{what}=N.')


def shard_host_batch(batch: Any, mesh: Mesh) -> Any:
  """Host-local numpy arrays (this process's rows) -> global sharded arrays."""
  sharding = data_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)


def process_rows(mesh: Mesh, global_batch: int,
                 what: str = 'batch_size') -> tuple[int, int]:
  """Rows `[start, stop)` of a global batch this process's devices hold.

  Read from the sharding rather than assumed to be `p * B / P`, so any
  device order works as long as each process's rows are contiguous.
  """
  check_divisible(global_batch, mesh, what)
  slices = data_sharded(mesh).addressable_devices_indices_map(
      (global_batch,)).values()
  bounds = sorted(s[0].indices(global_batch)[:2] for s in slices)
  start, stop = bounds[0][0], bounds[-1][1]
  if stop - start != sum(b - a for a, b in bounds):
    raise ValueError("This process's rows of the batch are not contiguous: "
                     'build the mesh from jax.devices() in process order.')
  return start, stop
