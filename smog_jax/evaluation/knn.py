"""Weighted k-nearest-neighbour classification of frozen features.

The InstDisc / DINO monitor: features are L2-normalised, each test row takes
its `k` most cosine-similar training rows, each neighbour votes for its class
with weight `exp(sim / T)`, and the class with the largest summed weight wins
(ties between classes go to the lowest class id; ties between neighbours of
equal similarity to the lowest training row, as `lax.top_k` orders them).

The test rows are processed in chunks inside one compiled `lax.map`, so the
`[chunk, N]` similarity block bounds memory whatever the size of the test set.
The training rows are split over the mesh's `data` axis: each device keeps
the top-k of its own shard and only `k` candidates per device are gathered,
so no device ever holds all `N` similarities of a row.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from smog_jax import sharding as sharding_lib
from smog_jax.grouping import l2_normalize

# Elements of the [chunk, N] similarity block per device when choosing the
# chunk size automatically (~256 MiB of float32).
_DEFAULT_BLOCK_ELEMENTS = 64 * 1024 * 1024


def _vote(sims: jax.Array, labels: jax.Array, num_classes: int,
          temperature: float, top: int) -> jax.Array:
  """`[c, k]` neighbour similarities and labels -> `[c, top]` best classes.

  Classes are ranked by summed vote weight; `lax.top_k` puts the lower class
  id first on equal votes, as `argmax` would.
  """
  weights = jnp.exp(sims / temperature)
  # Padding rows carry similarity -inf, hence weight 0: they never vote.
  votes = jnp.sum(jax.nn.one_hot(labels, num_classes) * weights[..., None],
                  axis=1)
  return jax.lax.top_k(votes, top)[1]


def _chunked(test: jax.Array, chunk_size: int, fn) -> jax.Array:
  """Applies `fn` to `[chunk_size, F]` blocks of `test`; returns `[T, ...]`."""
  num_test = test.shape[0]
  num_chunks = -(-num_test // chunk_size)
  padded = jnp.pad(test, ((0, num_chunks * chunk_size - num_test), (0, 0)))
  out = jax.lax.map(fn, padded.reshape(num_chunks, chunk_size, -1))
  return out.reshape((-1,) + out.shape[2:])[:num_test]


def _local_then_global_topk(block: jax.Array, train: jax.Array,
                            labels: jax.Array, valid: jax.Array, k: int):
  """Inside shard_map: top-k of this device's train shard, then of the union.

  Candidates are concatenated in device order, i.e. ascending global row, so
  ties resolve as a global `top_k` would.
  """
  sims = jnp.where(valid[None, :], block @ train.T, -jnp.inf)
  local_k = min(k, train.shape[0])
  vals, idx = jax.lax.top_k(sims, local_k)
  vals = jax.lax.all_gather(vals, sharding_lib.DATA_AXIS, axis=1, tiled=True)
  labs = jax.lax.all_gather(labels[idx], sharding_lib.DATA_AXIS, axis=1,
                            tiled=True)
  vals, pick = jax.lax.top_k(vals, k)
  return vals, jnp.take_along_axis(labs, pick, axis=1)


@functools.partial(jax.jit, static_argnames=('num_classes', 'k', 'chunk_size',
                                             'top', 'mesh'))
def _predict(train: jax.Array, train_labels: jax.Array,
                     valid: jax.Array, test: jax.Array, *, num_classes: int,
                     k: int, temperature: float, chunk_size: int,
                     top: int, mesh: Mesh) -> jax.Array:
  train = l2_normalize(train)
  topk = jax.shard_map(
      functools.partial(_local_then_global_topk, k=k), mesh=mesh,
      in_specs=(P(), P(sharding_lib.DATA_AXIS), P(sharding_lib.DATA_AXIS),
                P(sharding_lib.DATA_AXIS)),
      out_specs=P(), check_vma=False)

  def chunk_fn(block):
    sims, labels = topk(l2_normalize(block), train, train_labels, valid)
    return _vote(sims, labels, num_classes, temperature, top)

  return _chunked(test, chunk_size, chunk_fn)


def knn_classify(train_features: np.ndarray | jax.Array,
                 train_labels: np.ndarray | jax.Array,
                 test_features: np.ndarray | jax.Array,
                 num_classes: int, k: int = 20, temperature: float = 0.07,
                 *, top: int = 1, mesh: Mesh | None = None,
                 chunk_size: int | None = None) -> np.ndarray:
  """The `top` best classes by weighted kNN vote for every test row.

  Args:
    train_features: `[N, F]` (need not be normalised).
    train_labels: `[N]` int class ids in `[0, num_classes)`.
    test_features: `[T, F]`.
    num_classes: C.
    k: neighbours per test row (clamped to N).
    temperature: T of the `exp(sim / T)` vote weights.
    top: classes returned per row, best first (clamped to C).
    mesh: the 1-D `data` mesh the training rows are split over (default:
      every device).
    chunk_size: test rows per block; default keeps each device's similarity
      block near 256 MiB.

  Returns:
    `[T, top]` int32 class ids, on the host.
  """
  train = np.asarray(train_features, np.float32)
  labels = np.asarray(train_labels, np.int32)
  test = np.asarray(test_features, np.float32)
  if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
    raise ValueError(f'Expected [N, F] and [T, F] features, got {train.shape} '
                     f'and {test.shape}.')
  top = max(1, min(int(top), int(num_classes)))
  if test.shape[0] == 0:
    return np.zeros((0, top), np.int32)
  k = max(1, min(int(k), train.shape[0]))
  mesh = sharding_lib.make_mesh() if mesh is None else mesh
  rows_per_device = -(-train.shape[0] // mesh.size)
  if chunk_size is None:
    chunk_size = max(1, min(1024, _DEFAULT_BLOCK_ELEMENTS // rows_per_device))
  chunk_size = max(1, min(int(chunk_size), test.shape[0]))
  pad = rows_per_device * mesh.size - train.shape[0]
  valid = np.ones(train.shape[0], bool)  # Padded with False.
  put = lambda x, s: jax.device_put(x, NamedSharding(mesh, s))
  shard = lambda x: put(np.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)),
                        P(sharding_lib.DATA_AXIS))
  pred = _predict(shard(train), shard(labels), shard(valid), put(test, P()),
                  num_classes=int(num_classes), k=k,
                  temperature=float(temperature), chunk_size=chunk_size,
                  top=top, mesh=mesh)
  return np.asarray(jax.device_get(pred)).astype(np.int32)


def knn_accuracy(train_features: np.ndarray | jax.Array,
                 train_labels: np.ndarray | jax.Array,
                 test_features: np.ndarray | jax.Array,
                 test_labels: np.ndarray | jax.Array,
                 num_classes: int, k: int = 20, temperature: float = 0.07,
                 *, mesh: Mesh | None = None,
                 chunk_size: int | None = None) -> dict[str, float]:
  """`{'top1', 'top5'}` accuracies (fractions; NaN without test rows).

  Args as `knn_classify`; `test_labels` is `[T]`.
  """
  test_labels = np.asarray(test_labels)
  if test_labels.shape[0] == 0:
    return dict(top1=float('nan'), top5=float('nan'))
  pred = knn_classify(train_features, train_labels, test_features,
                      num_classes, k, temperature, top=5, mesh=mesh,
                      chunk_size=chunk_size)
  hit = pred == test_labels[:, None]
  return dict(top1=float(np.mean(hit[:, 0])),
              top5=float(np.mean(hit.any(axis=1))))


def knn_top1(*args, **kwargs) -> float:
  """`knn_accuracy(...)['top1']`."""
  return knn_accuracy(*args, **kwargs)['top1']
