"""tf.data pipelines (host) and their global, sharded jax.Array iterators.

Determinism: which examples form the global batch of step ``s`` is decided in NumPy from
``(seed, epoch)`` (a permutation per epoch), and every random augmentation is a stateless TF op
seeded from ``(seed, stream, epoch, example index, pipeline, crop id)``. Nothing depends on the
number of processes, on tf.data's thread scheduling, or on where a run was restarted.
Each process builds only the rows ``[row_start, row_stop)`` of every global batch that its
devices hold.
"""

from __future__ import annotations

import collections
import functools
from typing import Callable, Iterator, Optional

import jax
import numpy as np
import tensorflow as tf

from smog_jax.augment import STREAM_BANK, STREAM_TRAIN
from smog_jax.data import crops
from smog_jax.data import sources
from smog_jax.data.settings import DataSettings

# The linear probe's crops: a third random stream (see smog_jax.augment).
STREAM_LINEAR = 2


def hide_accelerators_from_tf() -> None:
  """Keeps TensorFlow on the CPU so that it never grabs accelerator memory JAX needs."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass  # TF already initialised its devices (e.g. second pipeline); nothing to do.


def epoch_permutation(seed: int, stream: int, epoch: int, n: int) -> np.ndarray:
  """The example order of ``epoch``: a permutation of ``range(n)`` keyed by (seed, stream, epoch)."""
  return np.random.default_rng([seed, stream, epoch]).permutation(n)


@functools.lru_cache(maxsize=2)
def _cached_permutation(seed: int, stream: int, epoch: int, n: int) -> np.ndarray:
  return epoch_permutation(seed, stream, epoch, n)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full global batches per epoch (the remainder of the epoch is dropped)."""
  return num_examples // batch_size


def check_rows(batch_size: int, row_start: int, row_stop: int) -> None:
  if not 0 <= row_start < row_stop <= batch_size:
    raise ValueError(f'Bad rows [{row_start}, {row_stop}) of a batch of {batch_size}.')


def train_index_stream(seed: int, num_examples: int, batch_size: int, start_step: int,
                       row_start: int, row_stop: int) -> Iterator[tuple[int, int, np.ndarray]]:
  """Yields ``(step, epoch, example indices of rows [row_start, row_stop))`` from start_step."""
  spe = steps_per_epoch(num_examples, batch_size)
  if spe == 0:
    raise ValueError(f'Batch size {batch_size} exceeds the {num_examples} training examples.')
  step = start_step
  while True:
    epoch, pos = divmod(step, spe)
    perm = _cached_permutation(seed, STREAM_TRAIN, epoch, num_examples)
    yield step, epoch, perm[pos * batch_size + row_start:pos * batch_size + row_stop]
    step += 1


def padded_index_batches(order: np.ndarray, batch_size: int, row_start: int,
                         row_stop: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """One pass over ``order`` in global batches, the last one padded.

  Yields:
    ``(data_index, index, mask)`` for rows [row_start, row_stop): ``data_index`` is the example
    to read (a valid one, also on padding rows), ``index`` the example index reported in the
    batch (``len(order)`` on padding rows: out of range, so a JAX scatter drops it), ``mask``
    whether the row is real.
  """
  n = len(order)
  for k in range(-(-n // batch_size)):
    pos = k * batch_size + np.arange(row_start, row_stop)
    mask = pos < n
    data_index = order[pos % n]
    yield data_index, np.where(mask, data_index, n), mask


# ------------------------------------------------------------------------------------------
# Per-example TF functions.


def _fold(seed, value):
  return tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))


def example_seed(seed: int, stream: int, epoch, index):
  """int64 [2] seed of one example in one epoch and stream."""
  key = tf.constant([seed, stream], tf.int64)
  return _fold(_fold(key, epoch), index)


def crop_seed(example_key, pipeline, crop_id):
  """Seed of crop ``crop_id`` of augmentation pipeline ``pipeline`` (0 = A, 1 = B)."""
  return _fold(_fold(example_key, pipeline), crop_id)


class _Reader:
  """Reads (image, label) by example index inside tf.data, from memory or JPEG bytes."""

  def __init__(self, settings: DataSettings, split: str, limit: Optional[int]):
    self.is_jpeg = settings.dataset in sources.JPEG_DATASETS
    if self.is_jpeg:
      self._source = sources.JpegSource(settings, split, limit)
      self.num_examples = len(self._source)
      self.src_channels = 3
    else:
      images, labels = sources.load_numpy(settings, split, limit)
      self.num_examples = len(labels)
      self.src_channels = images.shape[-1]
      self._images = tf.constant(images)
      self._labels = tf.constant(labels)

  def read(self, index):
    """Returns (uint8 [H,W,C] image or scalar JPEG string, int32 label)."""
    if not self.is_jpeg:
      return tf.gather(self._images, index), tf.gather(self._labels, index)

    def fetch(i):
      image, label = self._source[int(i)]
      return np.bytes_(image), np.int32(label)

    image, label = tf.numpy_function(fetch, [index], [tf.string, tf.int32], stateful=False)
    image.set_shape([])
    label.set_shape([])
    return image, label


def _to_float(image, channels: int):
  image = tf.clip_by_value(tf.cast(image, tf.float32) / 255.0, 0.0, 1.0)
  return crops.to_channels(image, channels)


def _normalize(image, settings: DataSettings):
  """Evaluation images only: training views are normalised on the device."""
  return ((image - tf.constant(settings.mean, tf.float32)) /
          tf.constant(settings.std, tf.float32))


def random_crop(reader: _Reader, image, seed, size: int, scale, ratio, channels: int):
  """Random resized crop to ``size`` as float [0, 1]; fused decode-and-crop for JPEG bytes."""
  u = tf.random.stateless_uniform([1, crops.CROP_ATTEMPTS, 4], seed=seed)
  if reader.is_jpeg:
    shape = tf.image.extract_jpeg_shape(image)
    window = crops.crop_windows(u, shape[0], shape[1], scale, ratio)[0]
    pixels = tf.image.decode_and_crop_jpeg(image, window, channels=3)
  else:
    window = crops.crop_windows(u, tf.shape(image)[0], tf.shape(image)[1], scale,
                                ratio)[0]
    pixels = image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]
  out = crops.resize(pixels, size, antialias=True)
  out.set_shape([size, size, reader.src_channels])
  return _to_float(out, channels)


def centre_crop(reader: _Reader, image, size: int, fraction: float, channels: int):
  """Deterministic square centre crop (``fraction`` of the short side) resized to ``size``."""
  if reader.is_jpeg:
    shape = tf.image.extract_jpeg_shape(image)
    window = crops.centre_window(shape[0], shape[1], fraction)
    pixels = tf.image.decode_and_crop_jpeg(image, window, channels=3)
  else:
    h, w = image.shape[0], image.shape[1]
    if fraction == 1.0 and h == w == size:
      return _to_float(image, channels)  # Small images at their native size: identity.
    window = crops.centre_window(h, w, fraction)
    pixels = image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]
  out = crops.resize(pixels, size, antialias=True)
  out.set_shape([size, size, reader.src_channels])
  return _to_float(out, channels)


def view_uniforms(example_key, n_crops: int):
  """f32 ``[2, n_crops, DRAWS_PER_VIEW]``: the crop geometry of every view of one example.

  Row ``[p, j]`` belongs to crop ``j`` of pipeline ``p`` and is drawn from the seed
  ``fold_in(example_key, p)``, so a view's window and flip are a function of (seed, stream,
  epoch, example index, pipeline, crop id) only.
  """
  return tf.stack([
      tf.random.stateless_uniform([n_crops, crops.DRAWS_PER_VIEW], seed=_fold(example_key, p),
                                  dtype=tf.float32) for p in range(2)])


def _decode(reader, image):
  """uint8 [H, W, C] pixels: JPEG bytes decoded once (shared by all crops of the example)."""
  if reader.is_jpeg:
    pixels = tf.io.decode_jpeg(image, channels=3)
    pixels.set_shape([None, None, 3])
    return pixels
  return image


def crop_views(settings: DataSettings, pixels, u, size: int, scale):
  """Random resized crops + flips of one decoded image for views with uniforms ``u`` [n, K].

  Returns uint8 ``[n, size, size, C_src]``.
  """
  shape = tf.shape(pixels)
  n = u.shape[0]
  attempts = tf.reshape(u[:, :crops.FLIP_DRAW], [n, crops.CROP_ATTEMPTS, 4])
  windows = crops.crop_windows(attempts, shape[0], shape[1], scale, settings.aspect_ratio)
  views = crops.crop_views(pixels, windows, u[:, crops.FLIP_DRAW] < settings.flip_prob,
                           size, settings.antialias)
  views.set_shape([n, size, size, pixels.shape[-1]])
  return views


def _options(ds):
  options = tf.data.Options()
  options.deterministic = True  # Order of elements must not depend on thread timing.
  options.autotune.enabled = True
  options.experimental_optimization.map_and_batch_fusion = True
  options.experimental_optimization.map_parallelization = True
  options.experimental_optimization.parallel_batch = True
  return ds.with_options(options)


class _StreamReader:
  """Stand-in for :class:`_Reader` in streaming mode (examples arrive with their images)."""

  def __init__(self, source: 'sources.StreamSource', settings: DataSettings):
    self.is_jpeg = settings.dataset in sources.JPEG_DATASETS
    self.src_channels = 3 if self.is_jpeg else settings.channels
    self.num_examples = source.num_examples
    self.source = source


def _process_of_rows(batch_size: int, row_start: int, row_stop: int) -> tuple[int, int]:
  """(process index, process count) of the rows [row_start, row_stop) (equal parts assumed)."""
  rows = row_stop - row_start
  if batch_size % rows or row_start % rows:
    raise ValueError(f'Streaming needs equal row blocks per process; got [{row_start}, '
                     f'{row_stop}) of {batch_size}.')
  return row_start // rows, batch_size // rows


def _shuffle_seed(seed: int, stream: int, epoch, process: int):
  """int64 seed of the shuffle buffer of (seed, stream, epoch, process) in streaming mode."""
  return ((tf.cast(epoch, tf.int64) * 4 + stream) * 65_537 + process) * 1_000_003 + seed


def _use_streaming(settings: DataSettings, split: str) -> bool:
  return not sources.use_random_access(settings, split)


# ------------------------------------------------------------------------------------------
# Host datasets (numpy batches of this process's rows).


def _train_example_fn(settings: DataSettings, reader):
  """(step, epoch, index, image, label) -> the example's uint8 views and key material."""
  n_large, n_small = settings.num_large_crops, settings.num_small_crops

  def example(step, epoch, index, image, label):
    key = example_seed(settings.seed, STREAM_TRAIN, epoch, index)
    u = view_uniforms(key, n_large + n_small)
    online = tf.cast(tf.math.floormod(step, 2), tf.int32)  # Even steps: online = A (0).
    u_online, u_target = tf.gather(u, online), tf.gather(u, 1 - online)
    pixels = _decode(reader, image)
    large = lambda u: crop_views(settings, pixels, u[:n_large], settings.image_size,
                                 settings.large_scale)
    return {
        'online_large': large(u_online),
        'online_small': crop_views(settings, pixels, u_online[n_large:],
                                   settings.small_image_size, settings.small_scale),
        'target_large': large(u_target),
        'index': tf.cast(index, tf.int32),
        'epoch': tf.cast(epoch, tf.int32),
        'label': tf.cast(label, tf.int32),
    }

  return example


def build_train_dataset(settings: DataSettings, start_step: int, row_start: int,
                        row_stop: int, reader: Optional['_Reader'] = None):
  """tf.data.Dataset of this process's rows of the training batches from ``start_step``.

  Element ``k`` is the dict of rows [row_start, row_stop) of the global batch of step
  ``start_step + k`` (see docs/architecture.md for the keys). ``reader`` replaces the tfds
  source (benchmarks); it needs ``is_jpeg``, ``src_channels``, ``num_examples`` and
  ``read(index)``.

  Per example the image is read (and a JPEG decoded) once and every view's window and flip are
  drawn at once; the views leave as uint8, their photometric augmentation runs on the device
  (smog_jax.augment), keyed by the ``epoch`` and ``index`` the batch carries.
  """
  check_rows(settings.batch_size, row_start, row_stop)
  hide_accelerators_from_tf()
  rows = row_stop - row_start
  if reader is None and _use_streaming(settings, settings.train_split):
    return _build_streaming_train_dataset(settings, start_step, row_start, row_stop)
  reader = reader or _Reader(settings, settings.train_split, settings.train_slice)
  example = _train_example_fn(settings, reader)
  stream = functools.partial(train_index_stream, settings.seed, reader.num_examples,
                             settings.batch_size, start_step, row_start, row_stop)
  ds = tf.data.Dataset.from_generator(stream, output_signature=(
      tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64), tf.TensorSpec([rows], tf.int64)))
  ds = ds.map(lambda step, epoch, idx: (tf.fill([rows], step), tf.fill([rows], epoch), idx))
  ds = ds.unbatch()

  def read_and_crop(step, epoch, index):
    image, label = reader.read(index)
    return example(step, epoch, index, image, label)

  ds = ds.map(read_and_crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(rows, drop_remainder=True)
  return _options(ds.prefetch(tf.data.AUTOTUNE))


def _build_streaming_train_dataset(settings: DataSettings, start_step: int, row_start: int,
                                   row_stop: int):
  """Training batches when the source can only be read sequentially (TFRecord).

  Process ``p`` of ``P`` (from its rows) reads its own contiguous part of the split, shuffles
  it per epoch with a buffer seeded by (seed, epoch, p), and fills its rows of every step from
  that stream; each epoch takes ``steps_per_epoch * rows`` examples of the part. Resuming at
  step S skips ``(S % steps_per_epoch) * rows`` examples of epoch ``S // steps_per_epoch``
  (``Dataset.skip`` after the seeded shuffle), so a resumed run is identical to an
  uninterrupted one with the same process count. The global batch depends on the process count.
  """
  rows = row_stop - row_start
  proc, nproc = _process_of_rows(settings.batch_size, row_start, row_stop)
  source = sources.StreamSource(settings, settings.train_split, settings.train_slice, proc,
                                nproc)
  reader = _StreamReader(source, settings)
  spe = steps_per_epoch(source.num_examples, settings.batch_size)
  if spe == 0:
    raise ValueError(f'Batch size {settings.batch_size} exceeds the {source.num_examples} '
                     'training examples.')
  per_epoch = spe * rows  # <= the part's size: floor(n / P) >= spe * B / P.
  start_epoch, pos0 = divmod(start_step, spe)
  base = source.dataset()
  buffer = max(1, settings.shuffle_buffer)

  def epoch_ds(epoch):
    d = base.shuffle(buffer, seed=_shuffle_seed(settings.seed, STREAM_TRAIN, epoch, proc),
                     reshuffle_each_iteration=False).take(per_epoch)
    skip = tf.where(epoch == start_epoch, tf.constant(pos0 * rows, tf.int64), 0)
    d = d.skip(skip).enumerate()
    return d.map(lambda j, ex: (epoch * spe + (skip + j) // rows, epoch, ex[0], ex[1], ex[2]))

  ds = tf.data.Dataset.range(start_epoch, 2 ** 62).flat_map(epoch_ds)
  example = _train_example_fn(settings, reader)
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(rows, drop_remainder=True)
  return _options(ds.prefetch(tf.data.AUTOTUNE))


def _padded_dataset(settings: DataSettings, reader, order: Optional[np.ndarray],
                    batch_size: int, row_start: int, row_stop: int, per_example: Callable,
                    stream_epoch: Optional[int] = None,
                    stream_stream: int = 0):
  """One padded pass; ``order`` for random access, or ``reader.source`` streamed.

  Streaming: each process reads its own part in order (shuffled by ``stream_epoch`` when not
  None), padded to the batches of the largest part; every example is still seen once, with its
  index, but global batches are not in index order.
  """
  check_rows(batch_size, row_start, row_stop)
  rows = row_stop - row_start
  if isinstance(reader, _StreamReader):
    source = reader.source
    n_batches = -(-(-(-reader.num_examples // source.process_count)) // rows)
    real = source.dataset()
    if stream_epoch is not None:
      real = real.shuffle(max(1, settings.shuffle_buffer), reshuffle_each_iteration=False,
                          seed=_shuffle_seed(settings.seed, stream_stream, stream_epoch,
                                             source.process_index))
    n = reader.num_examples
    real = real.map(lambda i, im, lb: (i, i, True, im, lb))
    pad = source.dataset().take(1).repeat().map(lambda i, im, lb: (i, tf.constant(n, tf.int64),
                                                                   False, im, lb))
    ds = real.concatenate(pad).take(n_batches * rows)
  else:
    gen = functools.partial(padded_index_batches, order, batch_size, row_start, row_stop)
    ds = tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec([rows], tf.int64), tf.TensorSpec([rows], tf.int64),
        tf.TensorSpec([rows], tf.bool))).unbatch()
    ds = ds.map(lambda d, i, m: (d, i, m) + tuple(reader.read(d)))

  def example(data_index, index, mask, image, label):
    out = per_example(image, data_index)
    out.update(index=tf.cast(index, tf.int32), label=tf.cast(label, tf.int32), mask=mask)
    return out

  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(rows, drop_remainder=True)
  return _options(ds.prefetch(tf.data.AUTOTUNE))


def _make_reader(settings: DataSettings, split: str, limit: Optional[int], batch_size: int,
                 row_start: int, row_stop: int):
  if _use_streaming(settings, split):
    proc, nproc = _process_of_rows(batch_size, row_start, row_stop)
    return _StreamReader(sources.StreamSource(settings, split, limit, proc, nproc), settings)
  return _Reader(settings, split, limit)


def build_bank_fill_dataset(settings: DataSettings, row_start: int, row_stop: int):
  """One pass over the training split in index order: ``large`` crops (pipeline A), index, mask."""
  hide_accelerators_from_tf()
  reader = _make_reader(settings, settings.train_split, settings.train_slice,
                        settings.batch_size, row_start, row_stop)
  n = settings.num_large_crops

  def per_example(image, data_index):
    key = example_seed(settings.seed, STREAM_BANK, 0, data_index)
    pixels = _decode(reader, image)
    return {'large': crop_views(settings, pixels, view_uniforms(key, n)[0],
                                settings.image_size, settings.large_scale)}

  order = None if isinstance(reader, _StreamReader) else np.arange(reader.num_examples)
  return _padded_dataset(settings, reader, order, settings.batch_size, row_start, row_stop,
                         per_example)


def build_eval_dataset(settings: DataSettings, split: str, mode: str, row_start: int,
                       row_stop: int, epoch: int = 0):
  """One pass over ``split`` for evaluation.

  Args:
    settings: Resolved data settings.
    split: tfds split name (e.g. 'test', 'validation', 'train'; slices allowed).
    mode: 'test' (deterministic centre crop, index order) or 'linear_train' (random resized
      crop with ``settings.linear_scale`` + flip, shuffled by ``epoch``).
    row_start: First global-batch row of this process.
    row_stop: One past its last row.
    epoch: Keys the shuffle order and crops of 'linear_train'.

  Returns:
    Dataset of dicts image f32[b,S,S,C], label i32[b], index i32[b], mask bool[b].
  """
  hide_accelerators_from_tf()
  reader = _make_reader(settings, split, None, settings.eval_batch_size, row_start, row_stop)
  streaming = isinstance(reader, _StreamReader)
  S, C = settings.image_size, settings.channels
  n = reader.num_examples
  stream_epoch = None
  if mode == 'test':
    order = np.arange(n)

    def per_example(image, data_index):
      del data_index
      out = centre_crop(reader, image, S, settings.eval_crop_fraction, C)
      return {'image': _normalize(out, settings)}
  elif mode == 'linear_train':
    order = epoch_permutation(settings.seed, STREAM_LINEAR, epoch, n)
    stream_epoch = epoch

    def per_example(image, data_index):
      key = example_seed(settings.seed, STREAM_LINEAR, epoch, data_index)
      s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(key, 2))
      out = random_crop(reader, image, s_crop, S, settings.linear_scale, settings.aspect_ratio,
                        C)
      flip = tf.random.stateless_uniform([], seed=s_flip) < settings.flip_prob
      out = tf.cond(flip, lambda: tf.reverse(out, [1]), lambda: out)
      return {'image': _normalize(out, settings)}
  else:
    raise ValueError(f"mode must be 'test' or 'linear_train', got {mode!r}.")
  return _padded_dataset(settings, reader, None if streaming else order,
                         settings.eval_batch_size, row_start, row_stop, per_example,
                         stream_epoch=stream_epoch, stream_stream=STREAM_LINEAR)


# ------------------------------------------------------------------------------------------
# Global jax.Arrays.


def process_rows(mesh, global_batch: int) -> tuple[int, int]:
  """Rows ``[start, stop)`` of a global batch that this process's devices hold.

  Read from the sharding itself rather than assumed to be ``p*B/P``, so any device order of
  the mesh works as long as each process's rows are contiguous.
  """
  sharding = batch_sharding(mesh)
  if global_batch % mesh.size:
    raise ValueError(f'Batch size {global_batch} is not divisible by the {mesh.size} devices '
                     'of the mesh.')
  slices = sharding.addressable_devices_indices_map((global_batch,)).values()
  starts = sorted({s[0].start or 0 for s in slices})
  stops = sorted({s[0].stop if s[0].stop is not None else global_batch for s in slices})
  start, stop = starts[0], stops[-1]
  per_device = global_batch // mesh.shape['data']
  if (stop - start) != per_device * len(starts):
    raise ValueError('This process\'s rows of the batch are not contiguous; build the mesh '
                     'from jax.devices() in process order.')
  return start, stop


def batch_sharding(mesh):
  """``NamedSharding(mesh, P('data'))``: leading axis split over the 'data' mesh axis."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))


def global_batches(local_batches, mesh, global_batch: int, prefetch: int):
  """Turns this process's numpy rows into global sharded jax.Arrays, ``prefetch`` ahead.

  Transfers are asynchronous, so keeping ``prefetch`` batches in flight overlaps the copy to
  the devices with the training step.
  """
  sharding = batch_sharding(mesh)

  def to_global(batch):
    return {k: jax.make_array_from_process_local_data(sharding, v, (global_batch,) + v.shape[1:])
            for k, v in batch.items()}

  queue = collections.deque()
  for batch in local_batches:
    queue.append(to_global(batch))
    if len(queue) > prefetch:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
