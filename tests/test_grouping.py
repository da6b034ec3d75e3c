"""The grouping math against independent NumPy re-derivations of the spec."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from smog_jax import grouping
from smog_jax import sharding


def _unit_rows(rng, n, d):
  x = rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def np_assign(x, c):
  return np.argmax(x @ c.T, axis=1)


def np_momentum_update(c, x, a, m):
  """The spec's step 2, one group at a time."""
  new = np.empty_like(c)
  for k in range(len(c)):
    rows = x[a == k]
    mean = rows.mean(axis=0) if len(rows) else c[k]
    v = m * c[k] + (1 - m) * mean
    new[k] = v / np.linalg.norm(v)
  return new


def np_kmeans(x, init, num_iters):
  c = init.copy()
  for _ in range(num_iters):
    c = np_momentum_update(c, x, np_assign(x, c), 0.0)
  return c


def test_assign_is_argmax_of_dot_products():
  # Hand-made: row 0 is closest to group 1, row 1 to group 0, row 2 to 2.
  c = np.eye(3, dtype=np.float32)
  x = np.array([[0.1, 0.9, 0.0], [0.8, 0.2, 0.1], [0.0, 0.3, 0.95]],
               np.float32)
  np.testing.assert_array_equal(grouping.assign(x, c), [1, 0, 2])
  assert grouping.assign(x, c).dtype == jnp.int32


@pytest.mark.parametrize('momentum', [0.0, 0.5, 0.9, 0.99, 1.0])
def test_momentum_update_matches_numpy_with_empty_groups(momentum):
  rng = np.random.default_rng(0)
  c = _unit_rows(rng, 12, 5)
  x = _unit_rows(rng, 40, 5)
  a = rng.integers(0, 8, size=40)  # groups 8..11 receive nothing.
  got = np.asarray(grouping.momentum_update(c, x, a, momentum))
  want = np_momentum_update(c, x, a, momentum)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Empty groups keep their centroid exactly (up to re-normalisation).
  np.testing.assert_allclose(got[8:], c[8:], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def test_momentum_update_hand_computed():
  c = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  x = np.array([[0.6, 0.8], [0.8, 0.6]], np.float32)  # both given to group 0
  a = np.array([0, 0])
  # mean = (0.7, 0.7); m = 0.5: 0.5 * (1, 0) + 0.5 * (0.7, 0.7) = (0.85, 0.35)
  v = np.array([0.85, 0.35])
  got = np.asarray(grouping.momentum_update(c, x, a, 0.5))
  np.testing.assert_allclose(got[0], v / np.linalg.norm(v), rtol=1e-6)
  np.testing.assert_allclose(got[1], [0.0, 1.0], atol=1e-7)


@pytest.mark.parametrize('momentum', [0.0, 0.9])
def test_momentum_update_over_sharded_global_batch(momentum):
  assert jax.device_count() == 8
  rng = np.random.default_rng(1)
  c = _unit_rows(rng, 16, 8)
  x = _unit_rows(rng, 64, 8)
  mesh = sharding.make_mesh()
  xs = jax.device_put(x, NamedSharding(mesh, P('data')))
  fn = jax.jit(lambda c, x: grouping.momentum_update(
      c, x, grouping.assign(x, c), momentum))
  got = np.asarray(fn(c, xs))
  # Equal to the update from the whole batch, not from any one shard.
  want = np_momentum_update(c, x, np_assign(x, c), momentum)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  one_shard = np_momentum_update(c, x[:8], np_assign(x[:8], c), momentum)
  assert not np.allclose(got, one_shard, atol=1e-4)


def test_kmeans_zero_iters_returns_distinct_rows():
  rng = np.random.default_rng(2)
  x = _unit_rows(rng, 50, 4)
  c = np.asarray(grouping.kmeans(x, 10, 0, jax.random.PRNGKey(3)))
  matches = [np.flatnonzero(np.all(np.isclose(x, row, atol=1e-6), axis=1))
             for row in c]
  assert all(len(m) == 1 for m in matches)
  assert len({int(m[0]) for m in matches}) == 10


@pytest.mark.parametrize('num_rows,sharded', [(203, False), (200, True)])
def test_kmeans_matches_numpy_in_small_chunks(monkeypatch, num_rows, sharded):
  # Force many chunks (and, for 203 rows, a padded last chunk).
  monkeypatch.setattr(grouping, '_KMEANS_MAX_SCORES_PER_CHUNK', 7 * 9)
  rng = np.random.default_rng(4)
  x = _unit_rows(rng, num_rows, 6)
  key = jax.random.PRNGKey(5)
  init = np.asarray(grouping.kmeans(x, 9, 0, key))
  xs = x
  if sharded:
    xs = jax.device_put(x, NamedSharding(sharding.make_mesh(), P('data')))
  got = np.asarray(grouping.kmeans(xs, 9, 4, key))
  want = np_kmeans(x, init, 4)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_kmeans_separates_clear_clusters():
  # Three tight clusters around orthogonal axes: k-means must find them.
  rng = np.random.default_rng(6)
  centres = np.eye(3, dtype=np.float32)
  x = np.concatenate([c + 0.05 * rng.normal(size=(30, 3)) for c in centres])
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  for seed in range(5):
    c = np.asarray(grouping.kmeans(x, 3, 10, jax.random.PRNGKey(seed)))
    if len(set(np_assign(x, c))) == 3:  # an init with one row per cluster
      break
  labels = np_assign(x, c)
  for i in range(3):
    assert len(set(labels[30 * i:30 * (i + 1)])) == 1
  np.testing.assert_allclose(np.sort(np.abs(c).max(axis=1)), 1.0, atol=0.02)


def test_kmeans_rejects_more_groups_than_rows():
  with pytest.raises(ValueError, match='num_groups'):
    grouping.kmeans(np.ones((4, 2), np.float32), 5, 1, jax.random.PRNGKey(0))


def test_kmeans_memory_is_bounded_at_imagenet_scale():
  # Compile (no allocation) k-means for N = 1.28M, K = 3000, D = 128 sharded
  # over the 8 devices: the N x K float32 scores alone would be 15.4 GB.
  mesh = sharding.make_mesh()
  x = jax.ShapeDtypeStruct((1_281_168, 128), jnp.float32,
                           sharding=NamedSharding(mesh, P('data')))
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  compiled = jax.jit(grouping.kmeans, static_argnums=(1, 2)).lower(
      x, 3000, 10, key).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 2**30, f'{temp / 2**30:.1f} GiB of temporaries'


def test_group_contrastive_loss_matches_numpy():
  rng = np.random.default_rng(7)
  p = _unit_rows(rng, 6, 4)
  c = _unit_rows(rng, 5, 4)
  y = rng.integers(0, 5, size=6)
  logits = p @ c.T / 0.1
  logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  want = -np.mean(logp[np.arange(6), y])
  got = grouping.group_contrastive_loss(p, c, y, 0.1)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_group_contrastive_loss_broadcasts_crop_pairs():
  # V = 3 online crops x T = 2 target crops x B = 4 examples.
  rng = np.random.default_rng(8)
  p = _unit_rows(rng, 12, 4).reshape(3, 4, 4)
  c = _unit_rows(rng, 5, 4)
  y = rng.integers(0, 5, size=(2, 4))
  got = grouping.group_contrastive_loss(p[:, None], c, y[None], 0.2)
  want = np.mean([
      grouping.group_contrastive_loss(p[v], c, y[t], 0.2)
      for v in range(3) for t in range(2)])
  np.testing.assert_allclose(got, want, rtol=1e-5)
