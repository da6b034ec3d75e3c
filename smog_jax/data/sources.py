"""Where the images come from: tfds datasets by name, and the offline Fashion-MNIST builder.

Two kinds of source:

* small datasets (fashion_mnist, cifar10, cifar100): the split is loaded once into host memory as
  NumPy arrays and examples are gathered by index;
* imagenet2012: JPEG bytes, read by index from ``tfds.data_source`` when the prepared copy has
  array_record files (:class:`JpegSource`), else streamed sequentially, each process its own
  part of the split (:class:`StreamSource`); decoding is left to the pipeline.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import re
import uuid
from typing import Any, Mapping

import numpy as np

from smog_jax.data.settings import DataSettings

JPEG_DATASETS = ('imagenet2012',)
# Side of the images of the in-memory datasets (JPEG datasets vary).
NATIVE_IMAGE_SIZE = {'fashion_mnist': 28, 'cifar10': 32, 'cifar100': 32}
_IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


class DataNotFoundError(RuntimeError):
  """Raised when a dataset is neither prepared, nor downloadable, nor buildable offline."""


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


# ------------------------------------------------------------------------------------------
# Offline Fashion-MNIST from IDX files.


def _find_idx(idx_dir: str, stem: str) -> str | None:
  for name in (stem + '.gz', stem):
    path = os.path.join(idx_dir, name)
    if os.path.exists(path):
      return path
  return None


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped) into a NumPy array (big-endian header)."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    raw = f.read()
  magic = int.from_bytes(raw[:4], 'big')
  if magic >> 8 != 0x08:  # Type code 0x08 = unsigned byte; the only one MNIST files use.
    raise ValueError(f'{path}: not an unsigned-byte IDX file (magic {magic:#x}).')
  ndim = magic & 0xFF
  dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
  data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
  return data.reshape(dims)


def idx_files_available(idx_dir: str) -> bool:
  """Whether all four Fashion-MNIST IDX files (gzipped or not) are in ``idx_dir``."""
  return all(_find_idx(idx_dir, stem) for pair in _IDX_FILES.values() for stem in pair)


def build_fashion_mnist_from_idx(idx_dir: str, data_dir: str) -> str:
  """Writes a prepared tfds copy of fashion_mnist into ``data_dir`` from local IDX files.

  The copy is what ``tfds.builder('fashion_mnist', data_dir=data_dir)`` then loads like a
  downloaded one (same name, version and features). Examples keep the IDX order (no shuffling
  at write time), so example ``i`` of a split is row ``i`` of its IDX file. Works with any
  number of examples (the committed test fixture has 64 per split). The copy is written to a
  temporary sibling folder and renamed into place, so concurrent processes cannot leave a
  half-written dataset behind.

  Args:
    idx_dir: Folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
    data_dir: tfds data dir (local or anything ``tf.io.gfile`` accepts).

  Returns:
    The folder of the prepared version.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tfds = _tfds()
  builder = tfds.builder('fashion_mnist', data_dir=data_dir)
  features = builder.info.features
  final_dir = os.fspath(builder.data_dir)
  tmp_dir = final_dir + f'.incomplete-{uuid.uuid4().hex}'
  tf.io.gfile.makedirs(tmp_dir)
  for split, (images_stem, labels_stem) in _IDX_FILES.items():
    images = read_idx(_find_idx(idx_dir, images_stem))
    labels = read_idx(_find_idx(idx_dir, labels_stem))
    if images.shape[0] != labels.shape[0]:
      raise ValueError(f'{idx_dir}: {split} has {images.shape[0]} images, {labels.shape[0]} labels.')
    path = os.path.join(tmp_dir, f'fashion_mnist-{split}.tfrecord-00000-of-00001')
    with tf.io.TFRecordWriter(path) as writer:
      for image, label in zip(images, labels):
        writer.write(features.serialize_example({'image': image[..., None], 'label': int(label)}))
  tfds.folder_dataset.write_metadata(
      data_dir=tmp_dir, features=features, split_infos=None, version=str(builder.version),
      filename_template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
      description=f'{builder.info.description}\n\nBuilt offline from the IDX files in {idx_dir}.',
      homepage=builder.info.homepage, citation=builder.info.citation, check_data=True)
  try:
    tf.io.gfile.rename(tmp_dir, final_dir, overwrite=False)
  except Exception:  # pylint: disable=broad-except
    if not tf.io.gfile.exists(os.path.join(final_dir, 'dataset_info.json')):
      raise
    tf.io.gfile.rmtree(tmp_dir)  # Another process finished first; keep its copy.
  return final_dir


# ------------------------------------------------------------------------------------------
# Getting a prepared builder.


def _not_found_message(settings: DataSettings, cause: str) -> str:
  name = settings.dataset
  ways = [f'(1) a prepared tfds copy of {name!r} in data_dir={settings.data_dir!r} '
          '(config.data.data_dir; gs:// paths work)',
          '(2) internet access so that tfds can download it (config.data.download=True)'
          + (' -- imagenet2012 needs the manually downloaded archives in '
             '<data_dir>/downloads/manual' if name in JPEG_DATASETS else '')]
  if name == 'fashion_mnist':
    ways.append('(3) the IDX files, e.g. `apt-get install dataset-fashion-mnist` (files in '
                '/usr/share/datasets/fashion-mnist) or any folder set as '
                f'config.data.fashion_mnist_idx_dir (now {settings.fashion_mnist_idx_dir!r})')
  return (f'Dataset {name!r} is not available ({cause}). Provide it in one of these ways: '
          + '; '.join(ways) + '.')


def get_builder(settings: DataSettings):
  """Returns a prepared tfds builder for ``settings.dataset``, building/downloading if needed.

  Raises:
    DataNotFoundError: when no prepared copy exists and it can be neither built offline nor
      downloaded.
  """
  tfds = _tfds()
  builder = tfds.builder(settings.dataset, data_dir=settings.data_dir)
  if builder.is_prepared():
    return builder
  if settings.dataset == 'fashion_mnist' and idx_files_available(settings.fashion_mnist_idx_dir):
    build_fashion_mnist_from_idx(settings.fashion_mnist_idx_dir, settings.data_dir)
    return tfds.builder(settings.dataset, data_dir=settings.data_dir)
  if not settings.download:
    raise DataNotFoundError(_not_found_message(settings, 'no prepared copy; download disabled'))
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    raise DataNotFoundError(_not_found_message(settings, f'download failed: {e!r}')) from e
  return builder


def split_spec(split: str, limit: int | None) -> str:
  """``'train'`` -> ``'train[:limit]'`` when a limit is set."""
  return split if limit is None else f'{split}[:{int(limit)}]'


@functools.lru_cache(maxsize=8)
def _load_numpy_cached(settings: DataSettings, spec: str) -> tuple[np.ndarray, np.ndarray]:
  tfds = _tfds()
  builder = get_builder(settings)
  arrays = tfds.as_numpy(builder.as_dataset(split=spec, batch_size=-1))
  images = np.asarray(arrays['image'], np.uint8)
  labels = np.asarray(arrays['label'], np.int32)
  if images.ndim == 3:
    images = images[..., None]
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def _source_key(settings: DataSettings) -> DataSettings:
  """Settings reduced to the fields that decide which data is loaded (the cache key)."""
  return DataSettings(**{
      f.name: (getattr(settings, f.name) if f.name in _SOURCE_FIELDS else None)
      for f in dataclasses.fields(settings)})


_SOURCE_FIELDS = ('dataset', 'data_dir', 'fashion_mnist_idx_dir', 'download')


def load_numpy(settings: DataSettings, split: str, limit: int | None = None):
  """Loads a whole split of a small dataset into host memory: (uint8 [N,H,W,C], int32 [N]).

  The arrays are cached (read-only) per (dataset, data_dir, split), so the training, bank-fill
  and evaluation pipelines of one run share one copy.
  """
  return _load_numpy_cached(_source_key(settings), split_spec(split, limit))


def num_examples(settings: DataSettings, split: str, limit: int | None = None) -> int:
  """Number of examples of ``split`` (after ``limit``), from the dataset metadata if known."""
  builder = get_builder(settings)
  try:
    n = builder.info.splits[split].num_examples
  except Exception:  # pylint: disable=broad-except
    # Metadata without split sizes (e.g. under tfds.testing.mock_data): count the source.
    if settings.dataset in JPEG_DATASETS:
      if not use_random_access(settings, split):
        _, start, stop = _split_range(settings, split, limit)
        return stop - start
      return len(JpegSource(settings, split, limit))
    return len(load_numpy(settings, split, limit)[1])
  return n if limit is None else min(n, int(limit))


class JpegSource:
  """Random access to (JPEG bytes, label) of one split via ``tfds.data_source``."""

  def __init__(self, settings: DataSettings, split: str, limit: int | None = None):
    tfds = _tfds()
    get_builder(settings)
    self._source = tfds.data_source(
        settings.dataset, split=split_spec(split, limit), data_dir=settings.data_dir,
        download=False, decoders={'image': tfds.decode.SkipDecoding()})
    self._len = len(self._source)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> tuple[bytes, int]:
    example: Mapping[str, Any] = self._source[int(index)]
    return example['image'], int(example['label'])


# ------------------------------------------------------------------------------------------
# Random access or streaming.


def _base_split(split: str) -> str:
  return split.split('[', 1)[0]


def has_array_record(settings: DataSettings, split: str) -> bool:
  """Whether the prepared copy has array_record files for ``split`` (random access possible)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  builder = get_builder(settings)
  pattern = os.path.join(os.fspath(builder.data_dir),
                         f'{settings.dataset}-{_base_split(split)}.array_record*')
  try:
    return bool(tf.io.gfile.glob(pattern))
  except tf.errors.OpError:
    return False


def use_random_access(settings: DataSettings, split: str) -> bool:
  """Random access by index (True) or streaming (False) for ``split``.

  Small datasets are always in memory (random access). For JPEG datasets
  ``config.data.random_access`` decides: True, False, or 'auto' = whether the prepared copy has
  array_record files.
  """
  if settings.dataset not in JPEG_DATASETS:
    return True
  if settings.random_access == 'auto':
    return has_array_record(settings, split)
  return bool(settings.random_access)


_SLICE = re.compile(r'^(\w+)(?:\[(-?\d*):(-?\d*)\])?$')


def _split_range(settings: DataSettings, split: str, limit: int | None) -> tuple[str, int, int]:
  """(base split, start, stop) of ``split`` (absolute-index slices only) after ``limit``."""
  m = _SLICE.match(split)
  if not m:
    raise ValueError(f'Streaming supports plain splits or absolute slices like "train[:512]", '
                     f'got {split!r}.')
  base, lo, hi = m.group(1), m.group(2), m.group(3)
  total = _count_split(settings, base)
  start, stop, _ = slice(int(lo) if lo else None, int(hi) if hi else None).indices(total)
  stop = max(start, stop)
  if limit is not None:
    stop = min(stop, start + int(limit))
  return base, start, stop


def _count_split(settings: DataSettings, split: str) -> int:
  builder = get_builder(settings)
  try:
    n = builder.info.splits[split].num_examples
    if n:
      return int(n)
  except Exception:  # pylint: disable=broad-except
    pass
  # Metadata without split sizes (e.g. under tfds.testing.mock_data): count the stream.
  ds = builder.as_dataset(split=split, decoders={'image': _tfds().decode.SkipDecoding()})
  n = int(ds.cardinality())
  return n if n >= 0 else int(ds.reduce(0, lambda c, _: c + 1))


class StreamSource:
  """Sequential reading of one process's contiguous part of a split (TFRecord copies).

  The split (after its slice and ``limit``) has ``num_examples`` examples; process ``p`` of
  ``P`` reads examples ``[p * n // P, (p + 1) * n // P)`` -- the contiguous, even partition
  that ``tfds.split_for_jax_process`` / ``tfds.even_splits`` make, written as an absolute slice
  so that each example's index in the split is known (it keys the augmentation and is the
  memory-bank row). Files are read in order (no file shuffling, interleave cycle 1), so the
  ``j``-th example of the part has index ``p * n // P + j``.
  """

  def __init__(self, settings: DataSettings, split: str, limit: int | None,
               process_index: int, process_count: int):
    self._settings = settings
    self._base, self._lo, hi = _split_range(settings, split, limit)
    n = hi - self._lo
    self.num_examples = n
    self.process_index, self.process_count = process_index, process_count
    self.start = process_index * n // process_count
    self.stop = (process_index + 1) * n // process_count

  @property
  def tfds_split(self) -> str:
    return f'{self._base}[{self._lo + self.start}:{self._lo + self.stop}]'

  def dataset(self):
    """tf.data.Dataset of (int64 index in the split, image, int64 label), in index order.

    The image is the JPEG bytes for JPEG datasets, else uint8 ``[H, W, C]``.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tfds = _tfds()
    builder = get_builder(self._settings)
    decoders = ({'image': tfds.decode.SkipDecoding()}
                if self._settings.dataset in JPEG_DATASETS else None)
    ds = builder.as_dataset(
        split=self.tfds_split, shuffle_files=False, decoders=decoders,
        read_config=tfds.ReadConfig(interleave_cycle_length=1, interleave_block_length=None,
                                    shuffle_seed=None))
    ds = ds.take(self.stop - self.start).enumerate(self.start)
    return ds.map(lambda i, ex: (i, ex['image'], tf.cast(ex['label'], tf.int64)))
