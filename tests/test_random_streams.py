"""The random chains of smog_jax.random_streams, pinned value by value.

The expected values were recorded from commit 697e0e3, before the streams
moved to one module, through the code that training runs. A refactor that
changes one (a stream id, the order of the folds) changes the data, the
augmentations, dropout or k-means seeds a seed produces, and fails here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from smog_jax import augment
from smog_jax import random_streams
from smog_jax.data import indices
from smog_jax.data import pipeline
from smog_jax.random_streams import Stream

SEED, EPOCH, INDEX = 42, 3, 1234


def _data(key):
  return np.asarray(jax.random.key_data(key)).tolist()


def _state_rng():
  """The train state's rng, as create_train_state derives it."""
  return jax.random.split(jax.random.PRNGKey(SEED), 3)[2]


def test_stream_ids():
  assert {s.name: int(s) for s in Stream} == dict(
      TRAIN=0, BANK=1, LINEAR=2, DROPOUT=1 << 20)


def test_crop_keys_of_train_views_and_bank_fill():
  spec = augment.AugmentSpec(pipelines=(None, None), mean=(0.0,),
                             std=(1.0,), channels=1, seed=SEED)
  keys = lambda stream: _data(augment.crop_keys(
      spec, stream, jnp.array([EPOCH]), jnp.array([INDEX]), jnp.int32(1),
      jnp.array([0, 2])))
  assert keys(Stream.TRAIN) == [[[797323258, 93475006],
                                 [4276610040, 1794271772]]]
  assert keys(Stream.BANK) == [[[3985464519, 3163930348],
                                [3091900931, 1971732289]]]


def test_host_crop_seeds_and_draws():
  seed = lambda stream: pipeline.example_key(
      SEED, stream, tf.constant(EPOCH, tf.int64),
      tf.constant(INDEX, tf.int64))
  assert seed(Stream.TRAIN).numpy().tolist() == [-4424389002994008819, INDEX]
  assert seed(Stream.BANK).numpy().tolist() == [-5096340552342206779, INDEX]
  assert seed(Stream.LINEAR).numpy().tolist() == [2264382993064516190, INDEX]
  # Pipeline p's draws come from fold_in(seed, p).
  assert [random_streams.tf_fold(seed(Stream.BANK), p).numpy().tolist()
          for p in range(2)] == [[368711518452833082, p] for p in range(2)]
  draws = pipeline.view_draws(seed(Stream.TRAIN), 2).numpy()[:, :, :3]
  np.testing.assert_allclose(draws, [
      [[0.06675946712493896, 0.6424076557159424, 0.18347764015197754],
       [0.87724769115448, 0.5023139715194702, 0.0002804994583129883]],
      [[0.8321198225021362, 0.41759634017944336, 0.6462908983230591],
       [0.028978466987609863, 0.029722094535827637, 0.9959768056869507]]],
                             rtol=1e-6)


def test_example_orders():
  order = lambda s: indices.epoch_permutation(SEED, s, EPOCH, 20).tolist()
  assert order(Stream.TRAIN) == [2, 9, 4, 18, 0, 17, 10, 14, 15, 11, 5, 19, 6,
                                 7, 13, 1, 16, 8, 12, 3]
  assert order(Stream.LINEAR) == [19, 17, 2, 4, 9, 5, 6, 7, 10, 15, 11, 16, 8,
                                  1, 3, 18, 12, 0, 13, 14]
  rows = [(s, e, i.tolist()) for s, e, i in indices.train_indices(
      SEED, 20, 8, 1, 5, 2, 5)]
  assert rows == [(1, 0, [16, 5, 11]), (2, 1, [11, 18, 2]),
                  (3, 1, [14, 3, 9]), (4, 2, [4, 7, 0])]
  # The fast probe's order of stored features (evaluation/linear.py).
  assert random_streams.feature_order_rng(0, 1).permutation(10).tolist() == [
      9, 1, 3, 8, 7, 6, 0, 4, 2, 5]


def test_dropout_and_regroup_keys():
  rng = _state_rng()
  assert np.asarray(rng).tolist() == [2465931498, 255383827]
  assert [np.asarray(random_streams.dropout_key(rng, 7, r)).tolist()
          for r in (0, 1)] == [[164296264, 1819734950],
                               [1874819687, 2336885773]]
  assert [np.asarray(random_streams.regroup_key(rng, 3, h)).tolist()
          for h in (0, 1)] == [[3524349316, 3118651614],
                               [1804042458, 534385136]]


def test_streams_are_distinct():
  rng = jax.random.key(SEED)
  device = [_data(random_streams.crop_key(SEED, s, EPOCH, INDEX, 1, 0))
            for s in Stream]
  device += [_data(random_streams.dropout_key(rng, EPOCH, r)) for r in (0, 1)]
  device += [_data(random_streams.regroup_key(rng, EPOCH, h)) for h in (0, 1)]
  assert len({tuple(k) for k in device}) == len(device)
  host = {tuple(random_streams.tf_seed(SEED, s, EPOCH, INDEX).numpy())
          for s in Stream}
  assert len(host) == len(Stream)
  orders = {tuple(indices.epoch_permutation(SEED, s, EPOCH, 20))
            for s in Stream}
  assert len(orders) == len(Stream)
