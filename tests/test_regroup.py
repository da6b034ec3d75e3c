"""Regrouping and the memory-bank fill, as the pre-training loop runs them."""

import jax
import jax.numpy as jnp
import numpy as np

import step_fixtures as fx
from smog_jax import augment, memory_bank, sharding
from smog_jax.random_streams import Stream
from smog_jax.train_state import state_sharding

def _np(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _banks():
  """Bank 0 holds one set of K unit vectors, bank 1 another (N = K rows)."""
  rng = np.random.default_rng(0)
  sets = rng.normal(size=(2, fx.NUM_GROUPS, fx.DIM))
  sets /= np.linalg.norm(sets, axis=-1, keepdims=True)
  return sets, sets[:, ::-1].astype(np.float32)  # [2, N, D]


def _regrouped(epoch):
  _, _, _, state = fx.build(bank_rows=fx.NUM_GROUPS)
  sets, banks = _banks()
  state = state.replace(memory_bank=jnp.asarray(banks))
  # Let the online network differ from the target, as after training steps.
  state = state.replace(params=jax.tree.map(lambda p: p + 0.5, state.params),
                        batch_stats=jax.tree.map(lambda s: s + 0.25,
                                                 state.batch_stats))
  before = _np(state)
  mesh = sharding.make_mesh(jax.devices()[:2])  # 2 devices: N = 6 splits.
  state = jax.device_put(state, state_sharding(state, mesh))
  regroup = memory_bank.jit_regroup(3, fx.NUM_GROUPS, mesh, state)
  return sets, before, _np(regroup(state, jnp.int32(epoch)))


def test_each_head_clusters_its_bank_and_the_target_is_reset():
  for epoch in (0, 1):
    sets, before, after = _regrouped(epoch)
    for head in range(fx.NUM_HEADS):
      bank = (head + epoch) % 2  # The spec: banks alternate by head and epoch.
      # K groups of N = K rows: k-means starts from, and keeps, exactly that
      # bank's K vectors, and none of the other bank's.
      sims = after.centroids[head] @ sets[bank].T
      np.testing.assert_allclose(np.sort(sims.argmax(axis=1)),
                                 np.arange(fx.NUM_GROUPS))
      np.testing.assert_allclose(sims.max(axis=1), 1.0, atol=1e-5)
      assert (after.centroids[head] @ sets[1 - bank].T).max() < 0.999
    # target <- online (backbone and projector); online BN stats untouched.
    for name in ('backbone', 'projector'):
      for a, b in zip(jax.tree.leaves(after.target_params[name]),
                      jax.tree.leaves(before.params[name])):
        np.testing.assert_array_equal(a, b)
      for a, b in zip(jax.tree.leaves(after.target_batch_stats[name]),
                      jax.tree.leaves(before.batch_stats[name])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(after.batch_stats),
                    jax.tree.leaves(before.batch_stats)):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(after.memory_bank, before.memory_bank)


def test_bank_fill_writes_real_rows_drops_padding_keeps_statistics():
  # 13 examples in a bank padded to 16 rows; the pass's last batch has 3
  # padding rows reporting index 13, which is a real (padding) row of the
  # bank: the fill must go by `mask`, not by the index being out of range.
  network, _, _, state = fx.build(bank_rows=16, spec=fx.REFERENCE)
  batch = fx.batch(batch_size=16, seed=1)
  real = 13
  index = np.where(np.arange(16) < real, np.arange(16), real)
  batch = dict(large=batch['online_large'], index=index.astype(np.int32),
               mask=np.arange(16) < real)
  before = _np(state)
  mesh = sharding.make_mesh()
  state = jax.device_put(state, state_sharding(state, mesh))
  fill = memory_bank.jit_fill_bank_step(network, fx.REFERENCE, mesh, state)
  after = _np(fill(state, sharding.shard_host_batch(batch, mesh)))
  # Expected: train-mode projections of the bank stream's augmented views,
  # computed on the whole batch (BN statistics over all 16 rows).
  views = augment.augment_views(
      jnp.asarray(batch['large']), fx.REFERENCE, stream=Stream.BANK,
      epoch=jnp.zeros(16, jnp.int32), index=jnp.asarray(batch['index']),
      pipeline=0)
  out, _ = network.apply(
      {'params': before.params, 'batch_stats': before.batch_stats},
      views.reshape((-1,) + views.shape[2:]), train=True,
      with_predictor=False, mutable=['batch_stats'])
  z = np.array(out['projection']).reshape(16, 2, -1)
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  rows = index[:real]
  np.testing.assert_allclose(after.memory_bank[:, rows],
                             np.swapaxes(z[:real], 0, 1), atol=2e-5)
  assert np.all(after.memory_bank[:, real:] == 0)
  for a, b in zip(jax.tree.leaves(after.batch_stats),
                  jax.tree.leaves(before.batch_stats)):
    np.testing.assert_array_equal(a, b)
