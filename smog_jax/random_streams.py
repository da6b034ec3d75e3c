"""Every random chain of a run: one `Stream` per use, derived here.

A run's crops, augmentations, example order, dropout and k-means seeds are
functions of its seed (and step, epoch, index) only. Each chain below folds
its values in this order; the member values and the orders are pinned by
tests/test_random_streams.py: changing either changes what a seed produces.

Device (JAX threefry keys), from `jax.random.key(seed)`:
  crop_key: fold_in TRAIN | BANK, epoch, example index, pipeline (0 = A,
    1 = B), crop id -> the crop's photometric draws (augment.crop_keys;
    TRAIN: train_views, BANK: memory_bank.fill_bank_step, epoch 0, A).
From the train state's rng (split(PRNGKey(seed), 3)[2], train_state.py):
  dropout_key: fold_in DROPOUT, step, resolution (0 large, 1 small crops)
    -> the online network's drop-path rng (train.train_step).
  regroup_key: fold_in regrouping count, head (no stream id) -> the head's
    k-means seed (memory_bank.regroup). Counts stay below DROPOUT = 2**20.
Host (TensorFlow stateless seeds), from int64 `[seed, stream]`:
  tf_seed: stateless_fold_in epoch, example index, then (tf_fold) pipeline
    -> that pipeline's crop windows and flips (data.pipeline.example_key,
    view_draws). TRAIN: training crops; BANK: bank fill, epoch 0; LINEAR:
    the probe's 'linear_train' crops.
Host (NumPy), `default_rng([seed, stream, epoch])`:
  numpy_rng -> the epoch's example order (data.indices.epoch_permutation).
    TRAIN: training batches; LINEAR: the probe's 'linear_train' order.
Host (NumPy), `default_rng([seed, epoch])` (no stream id):
  feature_order_rng -> the fast probe's order of the stored features
    (evaluation/linear.py).

Not derived here: the initial parameters, centroids and state rng
(train_state.create_train_state), from `PRNGKey(seed)`.
"""

from __future__ import annotations

import enum

import jax
import numpy as np


@enum.unique
class Stream(enum.IntEnum):
  """The stream ids: the same example gets independent randomness in each."""
  TRAIN = 0
  BANK = 1
  LINEAR = 2
  DROPOUT = 1 << 20


def fold(key: jax.Array, *values) -> jax.Array:
  """`key` with `values` folded in, in order."""
  for value in values:
    key = jax.random.fold_in(key, value)
  return key


def crop_key(seed: int, stream: Stream, epoch, index, pipeline,
             crop) -> jax.Array:
  """The key of one crop's photometric draws."""
  return fold(jax.random.key(seed), int(stream), epoch, index, pipeline, crop)


def dropout_key(rng: jax.Array, step, resolution: int) -> jax.Array:
  """The drop-path rng of one online apply (0: large, 1: small crops)."""
  return fold(rng, int(Stream.DROPOUT), step, resolution)


def regroup_key(rng: jax.Array, regrouping, head: int) -> jax.Array:
  """The k-means key of `head` at regrouping `regrouping` (no stream id)."""
  return fold(rng, regrouping, head)


def tf_fold(seed, *values):
  """A stateless TF seed with `values` folded in, in order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for value in values:
    seed = tf.random.experimental.stateless_fold_in(seed,
                                                    tf.cast(value, tf.int64))
  return seed


def tf_seed(seed: int, stream: Stream, *values):
  """int64 `[2]` stateless TF seed `[seed, stream]`, `values` folded in."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf_fold(tf.constant([seed, int(stream)], tf.int64), *values)


def numpy_rng(seed: int, stream: Stream, *values) -> np.random.Generator:
  """The NumPy generator of `(seed, stream, *values)`."""
  return np.random.default_rng([seed, int(stream), *values])


def feature_order_rng(seed: int, epoch: int) -> np.random.Generator:
  """The fast probe's generator of an epoch's order (no stream id)."""
  return np.random.default_rng([seed, epoch])
