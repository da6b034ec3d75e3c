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

import numpy as np

from smog_jax.data import augment
from smog_jax.data import sources
from smog_jax.data.settings import DataSettings

# Random streams: the same example gets independent randomness in each use.
STREAM_TRAIN, STREAM_BANK, STREAM_LINEAR = 0, 1, 2


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def hide_accelerators_from_tf() -> None:
  """Keeps TensorFlow on the CPU so that it never grabs accelerator memory JAX needs."""
  tf = _tf()
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
  tf = _tf()
  return tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))


def example_seed(seed: int, stream: int, epoch, index):
  """int64 [2] seed of one example in one epoch and stream."""
  tf = _tf()
  key = tf.constant([seed, stream], tf.int64)
  return _fold(_fold(key, epoch), index)


def crop_seed(example_key, pipeline, crop_id):
  """Seed of crop ``crop_id`` of augmentation pipeline ``pipeline`` (0 = A, 1 = B)."""
  return _fold(_fold(example_key, pipeline), crop_id)


class _Reader:
  """Reads (image, label) by example index inside tf.data, from memory or JPEG bytes."""

  def __init__(self, settings: DataSettings, split: str, limit: Optional[int]):
    tf = _tf()
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
    tf = _tf()
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
  tf = _tf()
  image = tf.clip_by_value(tf.cast(image, tf.float32) / 255.0, 0.0, 1.0)
  return augment.to_channels(image, channels)


def random_crop(reader: _Reader, image, seed, size: int, scale, ratio, channels: int):
  """Random resized crop to ``size`` as float [0, 1]; fused decode-and-crop for JPEG bytes."""
  tf = _tf()
  if reader.is_jpeg:
    shape = tf.image.extract_jpeg_shape(image)
    window = augment.sample_crop_window(seed, shape[0], shape[1], scale, ratio)
    pixels = tf.image.decode_and_crop_jpeg(image, window, channels=3)
  else:
    window = augment.sample_crop_window(seed, tf.shape(image)[0], tf.shape(image)[1], scale,
                                        ratio)
    pixels = augment.crop(image, window)
  out = augment.resize(pixels, size)
  out.set_shape([size, size, reader.src_channels])
  return _to_float(out, channels)


def centre_crop(reader: _Reader, image, size: int, fraction: float, channels: int):
  """Deterministic square centre crop (``fraction`` of the short side) resized to ``size``."""
  tf = _tf()
  if reader.is_jpeg:
    shape = tf.image.extract_jpeg_shape(image)
    window = augment.centre_crop_window(shape[0], shape[1], fraction)
    pixels = tf.image.decode_and_crop_jpeg(image, window, channels=3)
  else:
    h, w = image.shape[0], image.shape[1]
    if fraction == 1.0 and h == w == size:
      return _to_float(image, channels)  # Small images at their native size: identity.
    window = augment.centre_crop_window(h, w, fraction)
    pixels = augment.crop(image, window)
  out = augment.resize(pixels, size)
  out.set_shape([size, size, reader.src_channels])
  return _to_float(out, channels)


def view_uniforms(example_key, n_crops: int):
  """f32 ``[2, n_crops, NUM_UNIFORMS]``: every random number of every view of one example.

  Row ``[p, j]`` belongs to crop ``j`` of pipeline ``p`` and is drawn from the seed
  ``fold_in(example_key, p)``, so a view's randomness is a function of (seed, stream, epoch,
  example index, pipeline, crop id) only.
  """
  tf = _tf()
  return tf.stack([
      tf.random.stateless_uniform([n_crops, augment.NUM_UNIFORMS], seed=_fold(example_key, p),
                                  dtype=tf.float32) for p in range(2)])


def _decode(reader, image):
  """uint8 [H, W, C] pixels: JPEG bytes decoded once (shared by all crops of the example)."""
  tf = _tf()
  if reader.is_jpeg:
    pixels = tf.io.decode_jpeg(image, channels=3)
    pixels.set_shape([None, None, 3])
    return pixels
  return image


def crop_views(settings: DataSettings, pixels, u, pipeline, size: int, scale):
  """Random resized crops + flips of one decoded image for views with uniforms ``u`` [n, K].

  Returns uint8 ``[n, size, size, C_src]``.
  """
  tf = _tf()
  shape = tf.shape(pixels)
  n = u.shape[0]
  if n == 0:
    return tf.zeros([0, size, size, pixels.shape[-1]], tf.uint8)
  attempts = tf.reshape(u[:, augment.U_CROP], [n, augment.CROP_ATTEMPTS, 4])
  windows = augment.sample_crop_windows(attempts, shape[0], shape[1], scale,
                                        settings.aspect_ratio)
  flip_prob = tf.gather(tf.constant([p.flip_prob for p in settings.pipelines], tf.float32),
                        pipeline)
  crops = augment.crop_resize_many(pixels, windows, u[:, augment.U_FLIP] < flip_prob, size)
  crops.set_shape([n, size, size, pixels.shape[-1]])
  return crops


# Crops at least this large get their colour ops per example (on the example's crops together)
# rather than on the whole batch: with 224 px crops a batch of crops is tens of MB per
# intermediate, so batch-level elementwise ops are memory-bound and slower; small crops gain
# from amortising TF's per-op cost over the batch.
PER_EXAMPLE_COLOUR_MIN_SIZE = 64


def colour_per_example(settings: DataSettings) -> bool:
  return settings.image_size >= PER_EXAMPLE_COLOUR_MIN_SIZE


def finish_views(settings: DataSettings, crops, u, pipeline):
  """Batch-level pixel ops of ``[rows, n, S, S, C_src]`` uint8 crops -> normalised f32."""
  tf = _tf()
  rows, n, size = tf.shape(crops)[0], crops.shape[1], crops.shape[2]
  C = settings.channels
  if n == 0:
    return tf.zeros([rows, 0, size, size, C], tf.float32)
  x = tf.reshape(crops, [-1, size, size, crops.shape[-1]])
  x = augment.to_channels_batch(tf.cast(x, tf.float32) * (1.0 / 255.0), C)
  uu, pp = tf.reshape(u, [-1, augment.NUM_UNIFORMS]), tf.reshape(pipeline, [-1])
  if colour_per_example(settings) and crops.shape[0] is not None:
    # One example's large crops: per-crop control flow, only the applied ops are computed.
    x = tf.ensure_shape(x, [crops.shape[0] * n, size, size, C])
    x = augment.augment_views_per_crop(x, uu, pp, settings.pipelines)
  else:
    x = augment.augment_views(x, uu, pp, settings.pipelines)
  x = augment.normalize(x, settings.mean, settings.std)
  return tf.reshape(x, [rows, n, size, size, C])


def _options(ds):
  tf = _tf()
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
  tf = _tf()
  return ((tf.cast(epoch, tf.int64) * 4 + stream) * 65_537 + process) * 1_000_003 + seed


def _use_streaming(settings: DataSettings, split: str) -> bool:
  return not sources.use_random_access(settings, split)


# ------------------------------------------------------------------------------------------
# Host datasets (numpy batches of this process's rows).


def _train_example_fn(settings: DataSettings, reader):
  """(step, epoch, index, image, label) -> uncoloured crops + their uniforms (per example)."""
  tf = _tf()
  n_large, n_small = settings.num_large_crops, settings.num_small_crops
  S, s = settings.image_size, settings.small_image_size
  per_example = colour_per_example(settings)

  def example(step, epoch, index, image, label):
    key = example_seed(settings.seed, STREAM_TRAIN, epoch, index)
    u = view_uniforms(key, n_large + n_small)
    online = tf.cast(tf.math.floormod(step, 2), tf.int32)  # Even steps: online = A (0).
    target = 1 - online
    u_on, u_tg = tf.gather(u, online), tf.gather(u, target)
    u_large = tf.concat([u_on[:n_large], u_tg[:n_large]], 0)
    p_large = tf.concat([tf.fill([n_large], online), tf.fill([n_large], target)], 0)
    u_small, p_small = u_on[n_large:], tf.fill([n_small], online)
    pixels = _decode(reader, image)
    out = {
        'large': crop_views(settings, pixels, u_large, p_large, S, settings.large_scale),
        'large_u': u_large, 'large_p': p_large,
        'small': crop_views(settings, pixels, u_small, p_small, s, settings.small_scale),
        'small_u': u_small, 'small_p': p_small,
        'index': tf.cast(index, tf.int32),
        'label': tf.cast(label, tf.int32),
    }
    if per_example:
      for name in ('large', 'small'):
        out[name] = finish_views(settings, out[name][None], out[name + '_u'][None],
                                 out[name + '_p'][None])[0]
    return out

  def finish(b):
    if per_example:
      large, small = b['large'], b['small']
    else:
      large = finish_views(settings, b['large'], b['large_u'], b['large_p'])
      small = finish_views(settings, b['small'], b['small_u'], b['small_p'])
    return {
        'online_large': large[:, :n_large],
        'online_small': small,
        'target_large': large[:, n_large:],
        'index': b['index'],
        'label': b['label'],
    }

  return example, finish


def build_train_dataset(settings: DataSettings, start_step: int, row_start: int,
                        row_stop: int, reader: Optional['_Reader'] = None):
  """tf.data.Dataset of this process's rows of the training batches from ``start_step``.

  Element ``k`` is the dict of rows [row_start, row_stop) of the global batch of step
  ``start_step + k`` (see docs/architecture.md for the keys). ``reader`` replaces the tfds
  source (benchmarks); it needs ``is_jpeg``, ``src_channels``, ``num_examples`` and
  ``read(index)``.

  Per example the image is read (and a JPEG decoded) once, every view's random numbers are drawn
  at once, and all crops of a size come from one ``crop_and_resize``; the colour ops then run
  on the whole batch of crops (``finish_views``).
  """
  tf = _tf()
  check_rows(settings.batch_size, row_start, row_stop)
  hide_accelerators_from_tf()
  rows = row_stop - row_start
  if reader is None and _use_streaming(settings, settings.train_split):
    return _build_streaming_train_dataset(settings, start_step, row_start, row_stop)
  reader = reader or _Reader(settings, settings.train_split, settings.train_slice)
  example, finish = _train_example_fn(settings, reader)
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
  ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
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
  tf = _tf()
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
  example, finish = _train_example_fn(settings, reader)
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(rows, drop_remainder=True)
  ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _options(ds.prefetch(tf.data.AUTOTUNE))


def _padded_dataset(settings: DataSettings, reader, order: Optional[np.ndarray],
                    batch_size: int, row_start: int, row_stop: int, per_example: Callable,
                    finish: Optional[Callable] = None, stream_epoch: Optional[int] = None,
                    stream_stream: int = 0):
  """One padded pass; ``order`` for random access, or ``reader.source`` streamed.

  Streaming: each process reads its own part in order (shuffled by ``stream_epoch`` when not
  None), padded to the batches of the largest part; every example is still seen once, with its
  index, but global batches are not in index order.
  """
  tf = _tf()
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
  if finish is not None:
    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _options(ds.prefetch(tf.data.AUTOTUNE))


def _make_reader(settings: DataSettings, split: str, limit: Optional[int], batch_size: int,
                 row_start: int, row_stop: int):
  if _use_streaming(settings, split):
    proc, nproc = _process_of_rows(batch_size, row_start, row_stop)
    return _StreamReader(sources.StreamSource(settings, split, limit, proc, nproc), settings)
  return _Reader(settings, split, limit)


def build_bank_fill_dataset(settings: DataSettings, row_start: int, row_stop: int):
  """One pass over the training split in index order: ``large`` crops (pipeline A), index, mask."""
  tf = _tf()
  hide_accelerators_from_tf()
  reader = _make_reader(settings, settings.train_split, settings.train_slice,
                        settings.batch_size, row_start, row_stop)
  n = settings.num_large_crops
  S = settings.image_size

  def per_example(image, data_index):
    key = example_seed(settings.seed, STREAM_BANK, 0, data_index)
    u = view_uniforms(key, n)[0]
    p = tf.zeros([n], tf.int32)
    pixels = _decode(reader, image)
    crops = crop_views(settings, pixels, u, p, S, settings.large_scale)
    if colour_per_example(settings):
      return {'large': finish_views(settings, crops[None], u[None], p[None])[0]}
    return {'large': crops, 'u': u, 'p': p}

  def finish(b):
    out = dict(b)
    if 'u' in out:
      out['large'] = finish_views(settings, out.pop('large'), out.pop('u'), out.pop('p'))
    return out

  order = None if isinstance(reader, _StreamReader) else np.arange(reader.num_examples)
  return _padded_dataset(settings, reader, order, settings.batch_size, row_start, row_stop,
                         per_example, finish)


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
  tf = _tf()
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
      return {'image': augment.normalize(out, settings.mean, settings.std)}
  elif mode == 'linear_train':
    order = epoch_permutation(settings.seed, STREAM_LINEAR, epoch, n)
    stream_epoch = epoch

    def per_example(image, data_index):
      key = example_seed(settings.seed, STREAM_LINEAR, epoch, data_index)
      s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(key, 2))
      out = random_crop(reader, image, s_crop, S, settings.linear_scale, settings.aspect_ratio,
                        C)
      out = augment.maybe_flip(out, s_flip, settings.pipelines[0].flip_prob)
      return {'image': augment.normalize(out, settings.mean, settings.std)}
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
  import jax  # pylint: disable=g-import-not-at-top
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
  del jax
  return start, stop


def batch_sharding(mesh):
  """``NamedSharding(mesh, P('data'))``: leading axis split over the 'data' mesh axis."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))


def global_batches(local_batches, mesh, global_batch: int, prefetch: int):
  """Turns this process's numpy rows into global sharded jax.Arrays, ``prefetch`` ahead.

  Transfers are asynchronous, so keeping ``prefetch`` batches in flight overlaps the copy to
  the devices with the training step.
  """
  import jax  # pylint: disable=g-import-not-at-top
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
