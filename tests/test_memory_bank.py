"""A memory bank padded past the data set's size: padding is inert.

ImageNet's 1,281,167 examples (odd) cannot split over 8 devices; the bank is
padded with rows that k-means and the bank fill must ignore.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import step_fixtures as fx
from smog_jax import grouping, memory_bank, sharding
from test_grouping import _unit_rows, np_kmeans


@pytest.mark.parametrize('num_examples,shards,want', [
    (1_281_167, 8, 418 * 3072), (1_281_167, 1, 418 * 3072),
    (1_281_167, 512, 418 * 3072), (50_000, 32, 17 * 3072), (60, 8, 3072),
    (3072, 1, 3072), (100, 5, 15_360)])
def test_padded_rows_shards_and_stays_put_across_device_counts(
    num_examples, shards, want):
  rows = memory_bank.padded_rows(num_examples, shards)
  assert rows == want and rows % shards == 0 and rows >= num_examples


def _padded_bank(rng, num_valid, num_rows, dim):
  """Unit rows, then padding rows of large junk that would dominate means."""
  junk = 10.0 * rng.normal(size=(num_rows - num_valid, dim)) + 5.0
  return np.concatenate([_unit_rows(rng, num_valid, dim),
                         junk.astype(np.float32)])


@pytest.mark.parametrize('sharded', [False, True])
def test_kmeans_ignores_padding_rows(sharded):
  rng = np.random.default_rng(0)
  num_valid, num_rows, k = 59, 64, 12
  x = _padded_bank(rng, num_valid, num_rows, 5)
  xs = x
  if sharded:
    xs = jax.device_put(x, NamedSharding(sharding.make_mesh(), P('data')))
  for seed in range(4):
    key = jax.random.PRNGKey(seed)
    init = np.asarray(grouping.kmeans(xs, k, 0, key, num_valid=num_valid))
    # Every initial centroid is a distinct valid row.
    match = [np.flatnonzero(np.all(np.isclose(x[:num_valid], c, atol=1e-6),
                                   axis=1)) for c in init]
    assert all(len(m) == 1 for m in match)
    assert len({int(m[0]) for m in match}) == k
    got = np.asarray(grouping.kmeans(xs, k, 3, key, num_valid=num_valid))
    np.testing.assert_allclose(got, np_kmeans(x[:num_valid], init, 3),
                               rtol=1e-4, atol=1e-5)
  # Counted, the junk rows would move the centroids.
  unmasked = np.asarray(grouping.kmeans(x, k, 3, key))
  assert not np.allclose(unmasked, got, atol=1e-3)


def test_kmeans_rejects_a_bad_valid_count():
  x = np.ones((8, 2), np.float32)
  with pytest.raises(ValueError, match='num_valid=9'):
    grouping.kmeans(x, 2, 1, jax.random.PRNGKey(0), num_valid=9)
  with pytest.raises(ValueError, match='num_groups=5'):
    grouping.kmeans(x, 5, 1, jax.random.PRNGKey(0), num_valid=4)


def test_regroup_clusters_only_the_data_rows():
  num_examples, rows = 45, 48
  _, _, _, state = fx.build(bank_rows=rows)
  rng = np.random.default_rng(2)
  bank = np.stack([_padded_bank(rng, num_examples, rows, fx.DIM)
                   for _ in range(2)])
  state = state.replace(memory_bank=jnp.asarray(bank))
  mesh = sharding.make_mesh()
  regroup = memory_bank.jit_regroup(2, num_examples, mesh, state)
  epoch = 3
  rng_key = np.asarray(state.rng)  # the state is donated below
  new = regroup(state, jnp.asarray(epoch, jnp.int32))
  got = np.asarray(new.centroids)
  for h in range(fx.NUM_HEADS):
    data = bank[(h + epoch) % 2, :num_examples]
    key = jax.random.fold_in(jax.random.fold_in(rng_key, epoch), h)
    init = np.asarray(grouping.kmeans(data, fx.NUM_GROUPS, 0, key))
    np.testing.assert_allclose(got[h], np_kmeans(data, init, 2), rtol=1e-4,
                               atol=1e-5)
