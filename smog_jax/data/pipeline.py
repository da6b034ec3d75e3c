"""tf.data on the host: uint8 crops of this process's rows of each batch.

Which examples form a batch is decided in NumPy (`indices`), and each
process reads its rows' examples in one `DataSource.read` call per batch.
Every crop window and flip is drawn by a stateless TF op seeded from
`(seed, stream, epoch, example index, pipeline)`, one row of draws per crop
id (smog_jax.random_streams), so nothing depends on the number of processes,
on thread scheduling, or on where a run restarted. Everything that changes
pixel values (colour, blur, solarize, channel conversion, normalisation) runs
on the device (smog_jax.augment); training and evaluation crops leave here as
uint8.
"""

from __future__ import annotations

import collections
import os
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from smog_jax import random_streams
from smog_jax import sharding
from smog_jax.data import crops
from smog_jax.data import indices
from smog_jax.data.settings import DataSettings
from smog_jax.data.sources import DataSource
from smog_jax.random_streams import Stream

EVAL_MODES = ('test', 'linear_train')


def hide_accelerators_from_tf() -> None:
  """Keeps TensorFlow off the accelerators, whose memory JAX needs."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass  # TF already initialised its devices (a second pipeline).


def example_key(seed: int, stream: Stream, epoch, index):
  """int64 `[2]` seed of one example in one epoch and stream."""
  return random_streams.tf_seed(seed, stream, epoch, index)


def view_draws(key, n_crops: int):
  """f32 `[2, n_crops, DRAWS_PER_VIEW]`: window and flip draws of each view.

  Row `[p, j]`, crop `j` of pipeline `p`, is drawn from `fold_in(key, p)`.
  """
  return tf.stack([tf.random.stateless_uniform(
      [n_crops, crops.DRAWS_PER_VIEW], seed=random_streams.tf_fold(key, p))
      for p in range(2)])


def _windows(settings: DataSettings, draws, shape, scale):
  attempts = tf.reshape(draws[:, :crops.FLIP_DRAW],
                        [draws.shape[0], crops.CROP_ATTEMPTS, 4])
  return crops.crop_windows(attempts, shape[0], shape[1], scale,
                            settings.aspect_ratio)


def crop_views(settings: DataSettings, pixels, draws, size: int, scale):
  """uint8 `[n, size, size, C_src]` crops and flips of decoded `pixels`."""
  views = crops.crop_views(
      pixels, _windows(settings, draws, tf.shape(pixels), scale),
      draws[:, crops.FLIP_DRAW] < settings.flip_prob, size, settings.antialias)
  views.set_shape([draws.shape[0], size, size, pixels.shape[-1]])
  return views


def _decode(source: DataSource, image):
  """uint8 `[H, W, C]` pixels, decoded once for all crops of an example."""
  if not source.encoded:
    return image
  return tf.ensure_shape(tf.io.decode_jpeg(image, channels=3),
                         [None, None, 3])


def _eval_image(settings: DataSettings, source: DataSource, image, key,
                mode: str):
  """One uint8 `[S, S, C_src]` evaluation crop (normalised on the device).

  'test': the centre `eval_crop_fraction` of the short side; 'linear_train':
  a random resized crop (`linear_scale`) and flip. JPEGs decode only the
  window. The resize is antialiased.
  """
  shape = (tf.image.extract_jpeg_shape(image) if source.encoded else
           tf.shape(image))
  if mode == 'test':
    window = crops.centre_window(shape[0], shape[1],
                                 settings.eval_crop_fraction)
    flip = tf.constant(False)
  else:
    draws = view_draws(key, 1)[0]
    window = _windows(settings, draws, shape, settings.linear_scale)[0]
    flip = draws[0, crops.FLIP_DRAW] < settings.flip_prob
  if source.encoded:
    image = tf.image.decode_and_crop_jpeg(image, window, channels=3)
    window = tf.stack([0, 0, window[2], window[3]])
  size = settings.image_size
  view = crops.crop_views(image, window[None], flip[None], size,
                          antialias=True)[0]
  view.set_shape([size, size, 3 if source.encoded else source.image_shape[-1]])
  return view


def _dataset(source: DataSource, rows: int, batches: Callable,
             dtypes: tuple, per_example: Callable):
  """Host batches of `rows` examples from a generator of read rows.

  `batches()` yields `(*[rows] arrays of dtypes, images, labels)`;
  `per_example` maps one example of it to a dict.
  """
  if source.encoded:
    image_spec = tf.TensorSpec([rows], tf.string)
  else:
    image_spec = tf.TensorSpec([rows, *source.image_shape], tf.uint8)
  ds = tf.data.Dataset.from_generator(batches, output_signature=(
      *(tf.TensorSpec([rows], t) for t in dtypes), image_spec,
      tf.TensorSpec([rows], tf.int32)))
  # `per_example` is plain tensor code (its branches test Python values):
  # AutoGraph's source rewrite would only add start-up time to every
  # iterator. One example in flight per core; tf.data's autotuning is off:
  # with one map stage it has nothing to balance, and its model thread could
  # hold a deleted iterator (the end of every run) for up to a minute
  # (docs/benchmarks.md).
  ds = ds.unbatch().map(tf.autograph.experimental.do_not_convert(per_example),
                        num_parallel_calls=_host_cores(), deterministic=True)
  ds = ds.batch(rows, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True  # Element order must not follow thread timing.
  options.autotune.enabled = False
  return ds.with_options(options)


def _host_cores() -> int:
  """The cores this process may run on (tf.data's own thread count)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def train_example(settings: DataSettings, source: DataSource) -> Callable:
  """`(step, epoch, index, image, label)` -> one example's training dict.

  The image is decoded once and all its views' windows and flips are
  drawn at once; pipelines A and B swap online/target roles every step.
  """
  n_large = settings.num_large_crops

  def example(step, epoch, index, image, label):
    key = example_key(settings.seed, Stream.TRAIN, epoch, index)
    draws = view_draws(key, n_large + settings.num_small_crops)
    online = tf.cast(step % 2, tf.int32)  # Even steps: online = A (0).
    online_draws = tf.gather(draws, online)
    target_draws = tf.gather(draws, 1 - online)
    pixels = _decode(source, image)
    large = lambda draws: crop_views(settings, pixels, draws[:n_large],
                                     settings.large_crop_size,
                                     settings.large_scale)
    return dict(
        online_large=large(online_draws), target_large=large(target_draws),
        online_small=crop_views(settings, pixels, online_draws[n_large:],
                                settings.small_image_size,
                                settings.small_scale),
        index=tf.cast(index, tf.int32), epoch=tf.cast(epoch, tf.int32),
        label=label)

  return example


def build_train_dataset(settings: DataSettings, source: DataSource,
                        start_step: int, stop_step: int, row_start: int,
                        row_stop: int):
  """This process's rows of the training batches of steps [start, stop).

  Element `k` holds rows `[row_start, row_stop)` of the global batch of step
  `start_step + k` (keys in docs/architecture.md). It ends with the run:
  nothing past the last step is read or cropped.
  """
  hide_accelerators_from_tf()
  rows = row_stop - row_start

  def batches():
    for step, epoch, index in indices.train_indices(
        settings.seed, len(source), settings.batch_size, start_step,
        stop_step, row_start, row_stop):
      yield (np.full(rows, step), np.full(rows, epoch), index,
             *source.read(index))

  return _dataset(source, rows, batches, (tf.int64,) * 3,
                  train_example(settings, source))


def _padded_dataset(source: DataSource, order: np.ndarray, batch_size: int,
                    row_start: int, row_stop: int, per_example: Callable):
  """One pass over `order`, padded; every example counted once (`mask`)."""

  def batches():
    for read, index, mask in indices.padded_indices(order, batch_size,
                                                    row_start, row_stop):
      yield (read, index, mask, *source.read(read))

  def example(read, index, mask, image, label):
    return dict(per_example(read, image), index=tf.cast(index, tf.int32),
                mask=mask, label=label)

  return _dataset(source, row_stop - row_start, batches,
                  (tf.int64, tf.int64, tf.bool), example)


def build_bank_fill_dataset(settings: DataSettings, source: DataSource,
                            row_start: int, row_stop: int):
  """One pass in index order: `large` crops of pipeline A, index, mask."""
  hide_accelerators_from_tf()

  def per_example(read, image):
    key = example_key(settings.seed, Stream.BANK, 0, read)
    draws = view_draws(key, settings.num_large_crops)[0]
    return dict(large=crop_views(settings, _decode(source, image), draws,
                                 settings.large_crop_size,
                                 settings.large_scale))

  return _padded_dataset(source, np.arange(len(source)), settings.batch_size,
                         row_start, row_stop, per_example)


def build_eval_dataset(settings: DataSettings, source: DataSource, mode: str,
                       row_start: int, row_stop: int, epoch: int = 0):
  """One pass over `source` for evaluation: image, label, index, mask.

  Args:
    settings: the data settings.
    source: the split.
    mode: 'test' (index order) or 'linear_train' (order and crops keyed by
      `epoch`); see `_eval_image`.
    row_start: first global-batch row of this process.
    row_stop: one past its last row.
    epoch: epoch of 'linear_train'.
  """
  if mode not in EVAL_MODES:
    raise ValueError(f'mode must be one of {EVAL_MODES}, got {mode!r}.')
  hide_accelerators_from_tf()
  n = len(source)
  order = (np.arange(n) if mode == 'test' else
           indices.epoch_permutation(settings.seed, Stream.LINEAR, epoch, n))

  def per_example(read, image):
    key = example_key(settings.seed, Stream.LINEAR, epoch, read)
    return dict(image=_eval_image(settings, source, image, key, mode))

  return _padded_dataset(source, order, settings.eval_batch_size, row_start,
                         row_stop, per_example)


def global_batches(local_batches: Iterator[dict], mesh,
                   prefetch: int) -> Iterator[dict]:
  """This process's numpy rows as global sharded arrays, `prefetch` ahead.

  Transfers are asynchronous: batches in flight overlap the copy to the
  devices with the step.
  """
  queue = collections.deque()
  for batch in local_batches:
    queue.append(sharding.shard_host_batch(batch, mesh))
    if len(queue) > prefetch:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
