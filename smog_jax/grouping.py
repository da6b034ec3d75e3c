"""The SMoG grouping math (spec: "Groups", "One training step", "Regrouping").

Every function here is pure, works on global (possibly sharded) `jax.Array`s and
compiles under `jax.jit`. Groups are unit vectors `c_k` in R^D, stacked as
`centroids: [K, D]`; features are unit-norm rows `[N, D]`.

Synchronous grouping across devices needs no explicit collective here: when
`features` is sharded over a mesh, the per-group sums and counts below are
reductions over the sharded batch axis, so XLA's SPMD partitioner computes them
as local partial sums followed by an all-reduce over the whole global batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Guards the re-normalisation against a zero vector (e.g. a mean of features
# that cancel out exactly); a real centroid has norm 1.
_NORM_EPS = 1e-12

# k-means scores at most this many (row, group) pairs at once, so that
# N = 1.28M, K = 3000 never materialises the 15 GiB N x K score matrix.
_KMEANS_MAX_SCORES_PER_CHUNK = 1 << 24


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """Scales `x` to unit L2 norm along `axis` (zero vectors stay zero)."""
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, _NORM_EPS)


@jax.named_scope('grouping')  # Named in profiles, as below.
def assign(features: jax.Array, centroids: jax.Array) -> jax.Array:
  """Hard group assignment a(x) = argmax_k <x, c_k>.

  Args:
    features: `[N, D]` unit-norm features.
    centroids: `[K, D]` unit-norm group features.

  Returns:
    `int32[N]`, the index of each row's nearest group (no Sinkhorn, no
    balancing: the spec's hard argmax). Ties go to the lowest index.
  """
  scores = features @ centroids.T
  return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def group_statistics(
    features: jax.Array,
    assignments: jax.Array,
    num_groups: int,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Per-group sum of the assigned features and number of assigned rows.

  A segment sum, O(N * D), rather than a one-hot matmul, O(N * K * D).

  Args:
    features: `[N, D]`.
    assignments: `int32[N]` group of each row.
    num_groups: K.
    weights: optional `[N]` row weights (0 drops a padding row).

  Returns:
    `(sums [K, D], counts [K])`, both in `features.dtype`.
  """
  if weights is None:
    weights = jnp.ones(features.shape[:1], features.dtype)
  sums = jax.ops.segment_sum(
      features * weights[:, None], assignments, num_segments=num_groups)
  counts = jax.ops.segment_sum(weights, assignments, num_segments=num_groups)
  return sums, counts


def update_centroids(
    centroids: jax.Array,
    sums: jax.Array,
    counts: jax.Array,
    momentum: jax.Array | float,
) -> jax.Array:
  """c_k <- normalize(m * c_k + (1 - m) * mean_k) from per-group statistics.

  A group that received no row keeps its centroid: its "mean" is the centroid
  itself, so the update leaves it where it is (then re-normalises it).
  """
  nonempty = counts > 0
  means = sums / jnp.maximum(counts, 1)[:, None]
  means = jnp.where(nonempty[:, None], means, centroids)
  momentum = jnp.asarray(momentum, centroids.dtype)
  return l2_normalize(momentum * centroids + (1.0 - momentum) * means)


@jax.named_scope('grouping')
def momentum_update(
    centroids: jax.Array,
    features: jax.Array,
    assignments: jax.Array,
    momentum: jax.Array | float,
) -> jax.Array:
  """Synchronous momentum grouping: one update of the group features.

  For every group k, the mean of the rows assigned to k over *all* rows passed
  in (the global batch when `features` is sharded), then
  `c_k <- m * c_k + (1 - m) * mean_k`, then every `c_k` is re-normalised to unit
  length so the effective momentum cannot drift. Groups with no row keep their
  centroid.

  Args:
    centroids: `[K, D]` unit-norm group features before the update.
    features: `[N, D]` unit-norm features.
    assignments: `int32[N]`, usually `assign(features, centroids)`.
    momentum: m in [0, 1]; m = 0 is the k-means update.

  Returns:
    The updated `[K, D]` unit-norm centroids.
  """
  sums, counts = group_statistics(features, assignments, centroids.shape[0])
  return update_centroids(centroids, sums, counts, momentum)


def _kmeans_chunk_rows(num_rows: int, num_groups: int,
                       num_shards: int) -> int:
  """Rows scored per k-means chunk: bounded memory, a multiple of the shards."""
  rows = max(_KMEANS_MAX_SCORES_PER_CHUNK // num_groups, num_shards)
  rows = min(rows, num_rows)
  return max(num_shards, -(-rows // num_shards) * num_shards)


@functools.partial(jax.jit,
                   static_argnames=('num_groups', 'num_iters', 'num_valid'))
def kmeans(
    features: jax.Array,
    num_groups: int,
    num_iters: int,
    rng: jax.Array,
    num_valid: int | None = None,
) -> jax.Array:
  """Spherical k-means, exactly the spec's regrouping.

  Only the first `num_valid` rows are data: the rest pad a sharded memory bank
  to a multiple of the device count and are neither drawn as initial
  centroids nor counted in any mean.

  Initialised from `num_groups` distinct random valid rows; each iteration
  assigns every row to its nearest centroid and applies `momentum_update` with
  momentum 0 (mean of the assigned rows, re-normalised; empty groups keep
  their centroid).

  Memory stays bounded: the rows are scored in chunks of at most
  2^24 (row, group) pairs inside a `lax.scan`, accumulating only the `[K, D]`
  sums and `[K]` counts. A chunk is a strided slice of the rows, so when
  `features` is sharded over devices along its first axis every device scores
  its own rows of each chunk, and the accumulated statistics are all-reduced.

  Args:
    features: `[N, D]` unit-norm rows, N >= num_groups.
    num_groups: K (static).
    num_iters: number of assign-and-update iterations (static); 0 returns the
      initial rows.
    rng: PRNG key for the initial rows.
    num_valid: number of leading rows that are data (static); None = all.

  Returns:
    `[K, D]` unit-norm centroids.
  """
  num_rows, dim = features.shape
  num_valid = num_rows if num_valid is None else num_valid
  if not 0 < num_valid <= num_rows:
    raise ValueError(
        f'kmeans got num_valid={num_valid} for {num_rows} rows; it counts the '
        'leading data rows and must lie in [1, rows].')
  if num_groups > num_valid:
    raise ValueError(
        f'kmeans needs at least num_groups={num_groups} rows to draw distinct '
        f'initial centroids, got {num_valid}; lower num_groups or pass more '
        'features.')
  init_rows = jax.random.choice(rng, num_valid, (num_groups,), replace=False)
  centroids = l2_normalize(features[init_rows])
  if num_iters == 0:
    return centroids

  sharding = getattr(features, 'sharding', None)
  num_shards = getattr(sharding, 'num_devices', 1) if sharding else 1
  chunk = _kmeans_chunk_rows(num_rows, num_groups, num_shards)
  num_chunks = -(-num_rows // chunk)
  padded = num_chunks * chunk
  weights = (jnp.arange(num_rows) < num_valid).astype(features.dtype)
  if padded != num_rows:
    features = jnp.pad(features, ((0, padded - num_rows), (0, 0)))
    weights = jnp.pad(weights, (0, padded - num_rows))
  # Row r goes to chunk r % num_chunks, position r // num_chunks: contiguous
  # blocks of rows (one per device) stay on their device in every chunk.
  features = features.reshape(chunk, num_chunks, dim)
  weights = weights.reshape(chunk, num_chunks)

  def statistics(centroids):
    def add_chunk(carry, chunk_idx):
      sums, counts = carry
      rows = jax.lax.dynamic_index_in_dim(features, chunk_idx, 1, False)
      row_w = jax.lax.dynamic_index_in_dim(weights, chunk_idx, 1, False)
      s, c = group_statistics(rows, assign(rows, centroids), num_groups, row_w)
      return (sums + s, counts + c), None

    zeros = (jnp.zeros((num_groups, dim), features.dtype),
             jnp.zeros((num_groups,), features.dtype))
    (sums, counts), _ = jax.lax.scan(add_chunk, zeros, jnp.arange(num_chunks))
    return sums, counts

  def iteration(_, centroids):
    sums, counts = statistics(centroids)
    return update_centroids(centroids, sums, counts, 0.0)

  return jax.lax.fori_loop(0, num_iters, iteration, centroids)


@jax.named_scope('grouping')
def group_contrastive_loss(
    predictions: jax.Array,
    centroids: jax.Array,
    targets: jax.Array,
    temperature: float,
) -> jax.Array:
  """Mean cross-entropy of `predictions @ centroids.T / temperature` vs groups.

  Args:
    predictions: `[..., D]` unit-norm predictions p.
    centroids: `[K, D]` group features (the caller decides whether they carry
      gradient).
    targets: `int[...]` target group indices; broadcast against
      `predictions.shape[:-1]`, so `predictions[:, None]` (V crops) against
      `targets[None]` (T crops) scores all V x T pairs with one logits matrix.
    temperature: tau.

  Returns:
    The scalar mean over all broadcast (prediction, target) pairs.
  """
  logits = predictions @ centroids.T / temperature
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  target_log_probs = jnp.take_along_axis(
      log_probs, targets[..., None].astype(jnp.int32), axis=-1)
  return -jnp.mean(target_log_probs)
