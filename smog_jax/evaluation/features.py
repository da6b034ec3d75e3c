"""Frozen-backbone feature extraction over an evaluation iterator.

An evaluation batch is a dict of global arrays sharded over the mesh's `data`
axis: `image f32[B, S, S, C]`, `label i32[B]`, `index i32[B]` and
`mask bool[B]` (False on the padding of the last batch). The backbone runs in
inference mode (BN running statistics) under `jax.jit`; the features stay
sharded until they are gathered to every host, where padding rows are
dropped, so each example appears exactly once.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from smog_jax import sharding as sharding_lib

Batch = Mapping[str, jax.Array]


class PixelFeatures(nn.Module):
  """The raw-pixel "backbone": the flattened (already normalised) image."""

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    del train  # No parameters, no statistics.
    return images.reshape((images.shape[0], -1)).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=('backbone',))
def _apply(backbone: nn.Module, variables: Any, images: jax.Array) -> jax.Array:
  # A module-level jit keyed on the (hashable) module: the periodic kNN
  # monitor of the pre-training loop re-uses one compilation.
  return backbone.apply(variables, images, train=False)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` replicated over `mesh`."""
  return jax.device_put(tree, sharding_lib.replicated(mesh))


def to_host(x: jax.Array) -> np.ndarray:
  """A (possibly multi-host) global array, whole, as numpy on every host."""
  if jax.process_count() == 1 or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def batch_features(backbone: nn.Module, variables: Any, images: jax.Array,
                   mesh: Mesh) -> jax.Array:
  """Features of one global image batch, sharded over `data` like the input.

  `variables` should already be replicated over `mesh` (see `replicate`).
  The output's sharding follows the input's (rows over `data`).
  """
  del mesh  # The shardings come with `images` and `variables`.
  return _apply(backbone, variables, images)


def iterate_features(backbone: nn.Module, variables: Any,
                     iterator: Iterable[Batch], mesh: Mesh
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields `(features, labels, index)` host arrays per batch, padding dropped.

  The next batch is dispatched before the previous one is copied to the host,
  so device compute overlaps the transfer.
  """
  variables = replicate(variables, mesh)
  pending = None
  for batch in iterator:
    feats = _apply(backbone, variables, batch['image'])
    current = (feats, batch['label'], batch['index'], batch['mask'])
    if pending is not None:
      yield _gather(*pending)
    pending = current
  if pending is not None:
    yield _gather(*pending)


def _gather(feats, labels, index, mask):
  keep = to_host(mask).astype(bool)
  return (to_host(feats)[keep].astype(np.float32),
          to_host(labels)[keep].astype(np.int32),
          to_host(index)[keep].astype(np.int64))


def extract_features(backbone: nn.Module, variables: Any,
                     iterator: Iterable[Batch], mesh: Mesh,
                     return_index: bool = False):
  """Features of every example of an evaluation iterator, on every host.

  Args:
    backbone: a Flax module with `apply(variables, images, train=False)` ->
      `[B, F]` features.
    variables: its `{'params', 'batch_stats'}` (host or device arrays).
    iterator: batches as in the module docstring (global arrays sharded over
      `mesh`), e.g. `smog_jax.data.make_eval_iterator(config, mesh, split,
      'test')`.
    mesh: the 1-D `data` mesh.
    return_index: also return the examples' dataset indices.

  Returns:
    `(features f32[N, F], labels i32[N])` numpy arrays in iterator order, with
    the masked (padding) rows dropped; `(features, labels, index i64[N])` when
    `return_index`.
  """
  parts = list(iterate_features(backbone, variables, iterator, mesh))
  if not parts:
    raise ValueError('The evaluation iterator yielded no batch.')
  features, labels, index = (np.concatenate(p) for p in zip(*parts))
  if return_index:
    return features, labels, index
  return features, labels


def iterate_arrays(images: np.ndarray, labels: np.ndarray, batch_size: int,
                   mesh: Mesh, indices: np.ndarray | None = None
                   ) -> Iterator[dict[str, jax.Array]]:
  """In-memory arrays as an evaluation iterator (padded last batch, masks).

  Every process passes the same full arrays; each contributes the rows of its
  own devices. Useful for data already in memory and for tests.

  Args:
    images: `[N, S, S, C]` float images (already normalised).
    labels: `[N]` int labels.
    batch_size: global batch size, a multiple of `mesh.size`.
    mesh: the 1-D `data` mesh.
    indices: `[N]` example ids (default `arange(N)`).

  Yields:
    Dicts `image`, `label`, `index`, `mask` of global arrays sharded over
    `data`.
  """
  sharding_lib.check_divisible(batch_size, mesh, 'eval_batch_size')
  num = images.shape[0]
  indices = np.arange(num) if indices is None else np.asarray(indices)
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  for start in range(0, num, batch_size):
    stop = min(start + batch_size, num)
    pad = batch_size - (stop - start)
    padded = lambda x: np.concatenate(
        [x[start:stop], np.zeros((pad,) + x.shape[1:], x.dtype)])
    batch = dict(image=padded(images), label=padded(labels),
                 index=padded(indices.astype(np.int32)),
                 mask=np.arange(batch_size) < stop - start)
    yield shard_global_batch(batch, mesh)


def shard_global_batch(batch: Mapping[str, np.ndarray],
                       mesh: Mesh) -> dict[str, jax.Array]:
  """A full global batch, identical on every host, as sharded global arrays.

  Each process contributes only the rows of its own devices: the 1-D mesh
  orders devices by process, so those rows are one contiguous block.
  """
  size = next(iter(batch.values())).shape[0]
  sharding_lib.check_divisible(size, mesh)
  local = size // jax.process_count()
  lo = jax.process_index() * local
  return sharding_lib.shard_host_batch(
      {k: np.asarray(v)[lo:lo + local] for k, v in batch.items()}, mesh)
