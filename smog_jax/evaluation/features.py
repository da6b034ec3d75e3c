"""Frozen-backbone features, and in-memory arrays as evaluation batches.

An evaluation batch is a dict of global arrays sharded over the mesh's
`data` axis: its inputs (`image u8[B, S, S, C_src]` from
`smog_jax.data.make_eval_iterator`), `label i32[B]`, `index i32[B]` and
`mask bool[B]` (False on the padding of the last batch). The crops are
normalised on the device (`smog_jax.augment.eval_views`) in the same
compiled function as the backbone. Features stay sharded until gathered to
every host, where padding rows are dropped.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from smog_jax import augment
from smog_jax import sharding as sharding_lib
from smog_jax.data import indices

Batch = Mapping[str, jax.Array]


class PixelFeatures(nn.Module):
  """The raw-pixel "backbone": the flattened normalised image."""

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    del train  # No parameters, no statistics.
    return images.reshape((images.shape[0], -1)).astype(jnp.float32)


def backbone_features(backbone: nn.Module, variables: Any, images: jax.Array,
                      spec: augment.AugmentSpec) -> jax.Array:
  """Inference-mode features of uint8 crops, normalised as `spec` says."""
  return backbone.apply(variables, augment.eval_views(images, spec),
                        train=False)


# Jitted per (hashable) module and spec: repeated monitors share one program.
apply_backbone = jax.jit(backbone_features,
                         static_argnames=('backbone', 'spec'))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` replicated over `mesh`."""
  return jax.device_put(tree, sharding_lib.replicated(mesh))


def to_host(x: jax.Array) -> np.ndarray:
  """A (possibly multi-host) global array, whole, as numpy on every host."""
  if jax.process_count() == 1 or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def extract_features(backbone: nn.Module, variables: Any,
                     iterator: Iterable[Batch], mesh: Mesh,
                     spec: augment.AugmentSpec, return_index: bool = False):
  """Features of every example of an evaluation iterator, on every host.

  The next batch is dispatched before the previous one is copied to the
  host, so device compute overlaps the transfer.

  Args:
    backbone: a Flax module; `apply(variables, images, train=False)` gives
      `[B, F]` features.
    variables: its `{'params', 'batch_stats'}`.
    iterator: evaluation batches (module docstring).
    mesh: the 1-D `data` mesh.
    spec: the data's normalisation (`mean`, `std`, `channels`).
    return_index: also return the examples' dataset indices.

  Returns:
    `(features f32[N, F], labels i32[N])` in iterator order, padding
    dropped; `(features, labels, index i64[N])` when `return_index`.
  """
  variables = replicate(variables, mesh)
  parts, pending = [], None
  for batch in iterator:
    current = (apply_backbone(backbone, variables, batch['image'], spec),
               batch['label'], batch['index'], batch['mask'])
    if pending is not None:
      parts.append([to_host(x) for x in pending])
    pending = current
  if pending is None:
    raise ValueError('The evaluation iterator yielded no batch.')
  parts.append([to_host(x) for x in pending])
  feats, labels, index, mask = (np.concatenate(p) for p in zip(*parts))
  mask = mask.astype(bool)
  out = (feats[mask].astype(np.float32), labels[mask].astype(np.int32))
  return out + (index[mask].astype(np.int64),) if return_index else out


def round_to_mesh(batch_size: int, mesh: Mesh) -> int:
  """The smallest multiple of the device count that is >= `batch_size`."""
  return max(mesh.size, -(-batch_size // mesh.size) * mesh.size)


def array_batches(arrays: Mapping[str, np.ndarray], order: np.ndarray,
                  batch_size: int, mesh: Mesh) -> Iterator[dict]:
  """In-memory arrays, identical on every host, as evaluation batches.

  One pass over `order` in global batches of `batch_size` (a multiple of
  the device count), the last one padded (`smog_jax.data.indices`); each
  process contributes the rows of its own devices.

  Yields:
    Dicts of `arrays`' keys plus `index` and `mask`, global and sharded.
  """
  rows = sharding_lib.process_rows(mesh, batch_size, 'eval_batch_size')
  for read, index, mask in indices.padded_indices(order, batch_size, *rows):
    batch = {k: np.asarray(v)[read] for k, v in arrays.items()}
    yield sharding_lib.shard_host_batch(
        dict(batch, index=index.astype(np.int32), mask=mask), mesh)
