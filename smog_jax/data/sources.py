"""Where the images come from: one `DataSource` per split, read by index.

* fashion_mnist, cifar10, cifar100, stl10: the split is loaded once into
  host memory (`ArraySource`, uint8 pixels);
* imagenet2012: JPEG bytes read through tfds's random access
  (`as_data_source`), which needs the prepared copy in the array_record
  format. A TFRecord-only copy converts in place with one command (see
  `_CONVERT`);
* folder: any folder of images, prepared once into the same format
  (smog_jax.data.folder) and read as imagenet2012.

Fashion-MNIST can also be built offline from its IDX files.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import uuid
from typing import Iterable, Protocol

import numpy as np
from etils import epath

from smog_jax.data.settings import DataSettings

JPEG_DATASETS = ('imagenet2012', 'folder')
# Side of the images of the in-memory datasets (JPEG datasets vary).
NATIVE_IMAGE_SIZE = {'fashion_mnist': 28, 'cifar10': 32, 'cifar100': 32,
                     'stl10': 96}
_IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_CONVERT = ('tfds convert_format --dataset_version_dir={} '
            '--out_file_format=array_record')


class DataNotFoundError(RuntimeError):
  """The dataset is neither prepared, nor downloadable, nor buildable."""


class DataSource(Protocol):
  """Random access to the examples of one split.

  Attributes:
    encoded: images are JPEG bytes (else uint8 `[H, W, C]` pixels).
    image_shape: `[H, W, C]` of every image; None when encoded.
  """
  encoded: bool
  image_shape: tuple[int, ...] | None

  def __len__(self) -> int:
    ...

  def read(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 `[n, H, W, C]` or bytes `[n]`) and int32 labels `[n]`."""


class ArraySource:
  """A split held in memory: `images[index], labels[index]`."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels
    self.encoded = images.dtype == object
    self.image_shape = None if self.encoded else images.shape[1:]

  def __len__(self) -> int:
    return len(self.labels)

  def read(self, index):
    return self.images[index], self.labels[index]


class JpegSource:
  """JPEG bytes and labels of one split through tfds's random access."""

  encoded = True
  image_shape = None

  def __init__(self, settings: DataSettings, split: str):
    builder = get_builder(settings)
    try:
      self._source = builder.as_data_source(
          split, decoders={'image': _tfds().decode.SkipDecoding()})
    except NotImplementedError as e:  # No array_record files.
      raise DataNotFoundError(
          f'{builder.data_dir} holds no array_record files, which random '
          'access needs: convert it once with `'
          f'{_CONVERT.format(builder.data_dir)}`.') from e

  def __len__(self) -> int:
    return len(self._source)

  def read(self, index):
    examples = [self._source[int(i)] for i in index]
    return (np.array([e['image'] for e in examples], dtype=object),
            np.array([e['label'] for e in examples], np.int32))


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def split_spec(split: str, limit: int | None) -> str:
  """`'train'` -> `'train[:limit]'` when a limit is set."""
  return split if limit is None else f'{split}[:{int(limit)}]'


def train_split(settings: DataSettings) -> str:
  """The training split with its `train_slice`."""
  return split_spec(settings.train_split, settings.train_slice)


# Offline Fashion-MNIST from IDX files.


def _find_idx(idx_dir: str, stem: str) -> str | None:
  for name in (stem + '.gz', stem):
    path = os.path.join(idx_dir, name)
    if os.path.exists(path):
      return path
  return None


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped) into a NumPy array."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    raw = f.read()
  magic = int.from_bytes(raw[:4], 'big')
  if magic >> 8 != 0x08:  # 0x08: unsigned bytes, all MNIST files use.
    raise ValueError(f'{path}: not an unsigned-byte IDX file '
                     f'(magic {magic:#x}).')
  ndim = magic & 0xFF
  dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big')
          for i in range(ndim)]
  data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
  return data.reshape(dims)


def idx_count(path: str) -> int:
  """The number of items of an IDX file, from its header alone."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    return int.from_bytes(f.read(8)[4:], 'big')


def idx_files_available(idx_dir: str) -> bool:
  """Whether all four Fashion-MNIST IDX files are in `idx_dir`."""
  return all(_find_idx(idx_dir, stem) for pair in _IDX_FILES.values()
             for stem in pair)


def write_prepared_copy(name: str, data_dir: str | None,
                        examples: dict[str, Iterable[dict]],
                        description: str) -> str:
  """Writes a prepared tfds copy of dataset `name` from its examples.

  tfds then loads it like a downloaded one (same name, version, features);
  example `i` of a split is the `i`-th given. Written to a temporary
  sibling folder and renamed into place, so that concurrent processes
  cannot leave a half-written dataset behind.

  Args:
    name: a tfds dataset name.
    data_dir: tfds data dir (anything `tf.io.gfile` accepts).
    examples: per split, feature dicts as `builder.info.features` encodes.
    description: appended to the builder's description.

  Returns:
    The folder of the prepared version.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tfds = _tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  features = builder.info.features
  final_dir = os.fspath(builder.data_dir)
  tmp_dir = final_dir + f'.incomplete-{uuid.uuid4().hex}'
  tf.io.gfile.makedirs(tmp_dir)
  split_infos = []  # Given, so that tfds need not find (and print) them.
  for split, split_examples in examples.items():
    path = os.path.join(tmp_dir, f'{name}-{split}.tfrecord-00000-of-00001')
    count = 0
    with tf.io.TFRecordWriter(path) as writer:
      for example in split_examples:
        writer.write(features.serialize_example(example))
        count += 1
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[count],
        num_bytes=tf.io.gfile.stat(path).length))
  tfds.folder_dataset.write_metadata(
      data_dir=tmp_dir, features=features, split_infos=split_infos,
      version=str(builder.version),
      filename_template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
      description=f'{builder.info.description}\n\n{description}',
      homepage=builder.info.homepage, citation=builder.info.citation,
      check_data=True)
  try:
    tf.io.gfile.rename(tmp_dir, final_dir, overwrite=False)
  except Exception:  # pylint: disable=broad-except
    if not tf.io.gfile.exists(os.path.join(final_dir, 'dataset_info.json')):
      raise
    tf.io.gfile.rmtree(tmp_dir)  # Another process finished first.
  return final_dir


def _idx_examples(idx_dir: str, split: str):
  images_stem, labels_stem = _IDX_FILES[split]
  images = read_idx(_find_idx(idx_dir, images_stem))
  labels = read_idx(_find_idx(idx_dir, labels_stem))
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f'{idx_dir}: {split} has {images.shape[0]} images '
                     f'but {labels.shape[0]} labels.')
  for image, label in zip(images, labels):
    yield {'image': image[..., None], 'label': int(label)}


def build_fashion_mnist_from_idx(idx_dir: str, data_dir: str | None) -> str:
  """Writes a prepared tfds copy of fashion_mnist from local IDX files
  (`write_prepared_copy`; the IDX row order kept).

  Args:
    idx_dir: folder with `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`.
    data_dir: tfds data dir (anything `tf.io.gfile` accepts).

  Returns:
    The folder of the prepared version.
  """
  return write_prepared_copy(
      'fashion_mnist', data_dir,
      {split: _idx_examples(idx_dir, split) for split in _IDX_FILES},
      f'Built offline from the IDX files in {idx_dir}.')


# A prepared builder.


def _check_same_as_idx(builder, idx_dir: str) -> None:
  """Refuses a prepared fashion_mnist whose splits the IDX files contradict.

  A copy built from other files (e.g. a 64-image test fixture) under the
  same name would otherwise be trained on silently.
  """
  for split, (images_stem, _) in _IDX_FILES.items():
    want = idx_count(_find_idx(idx_dir, images_stem))
    have = builder.info.splits[split].num_examples
    if have != want:
      raise DataNotFoundError(
          f'The prepared fashion_mnist in {builder.data_dir} holds {have} '
          f'{split} images but the IDX files in {idx_dir} hold {want}: '
          'delete that folder (it is rebuilt from the IDX files) or set '
          'config.data.data_dir to another folder.')


@dataclasses.dataclass(frozen=True)
class Location:
  """Which prepared copy is read, and how a missing one is made."""
  dataset: str
  data_dir: str | None
  fashion_mnist_idx_dir: str
  download: bool

  @classmethod
  def of(cls, settings: DataSettings) -> Location:
    return cls(settings.dataset, settings.data_dir,
               settings.fashion_mnist_idx_dir, settings.download)


def _not_found_message(settings: Location, cause: str) -> str:
  name = settings.dataset
  ways = [f'(1) a prepared tfds copy of {name!r} in data_dir='
          f'{settings.data_dir!r} (config.data.data_dir; gs:// works)',
          '(2) internet access so that tfds can download it '
          '(config.data.download=True)'
          + (' -- imagenet2012 needs the manually downloaded archives in '
             '<data_dir>/downloads/manual' if name in JPEG_DATASETS else '')]
  if name == 'stl10':
    ways.append('(3) on a machine with internet, `python -c "import '
                'tensorflow_datasets as tfds; tfds.builder(\'stl10\', '
                f'data_dir=\'{settings.data_dir or "DATA_DIR"}\')'
                '.download_and_prepare()"`, then copy that data_dir here')
  if name == 'fashion_mnist':
    ways.append('(3) the IDX files, e.g. `apt-get install '
                'dataset-fashion-mnist` (files in /usr/share/datasets/'
                'fashion-mnist) or any folder set as config.data.'
                'fashion_mnist_idx_dir (now '
                f'{settings.fashion_mnist_idx_dir!r})')
  return (f'Dataset {name!r} is not available ({cause}). Provide it in one '
          'of these ways: ' + '; '.join(ways) + '.')


def _is_prepared(builder) -> bool:
  """`builder.is_prepared()`, without tfds's warning about the empty version
  folder that `tfds.builder` itself makes before a first preparation."""
  info = epath.Path(builder.data_dir) / 'dataset_info.json'
  return info.exists() and builder.is_prepared()


def get_builder(settings: DataSettings | Location):
  """A prepared tfds builder of `settings.dataset`, built/downloaded if need be.

  Raises:
    DataNotFoundError: no prepared copy, and none can be built offline or
      downloaded.
  """
  if settings.dataset == 'folder':
    from smog_jax.data import folder  # pylint: disable=g-import-not-at-top
    return folder.builder(settings)
  tfds = _tfds()
  builder = tfds.builder(settings.dataset, data_dir=settings.data_dir)
  idx_dir = settings.fashion_mnist_idx_dir
  from_idx = (settings.dataset == 'fashion_mnist' and
              idx_files_available(idx_dir))
  if _is_prepared(builder):
    if from_idx:
      _check_same_as_idx(builder, idx_dir)
    return builder
  if from_idx:
    build_fashion_mnist_from_idx(settings.fashion_mnist_idx_dir,
                                 settings.data_dir)
    return tfds.builder(settings.dataset, data_dir=settings.data_dir)
  if not settings.download:
    raise DataNotFoundError(_not_found_message(
        settings, 'no prepared copy; download disabled'))
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    raise DataNotFoundError(_not_found_message(
        settings, f'download failed: {e!r}')) from e
  return builder


@functools.lru_cache(maxsize=8)
def _load_numpy_cached(location: Location, spec: str):
  builder = get_builder(location)
  arrays = _tfds().as_numpy(builder.as_dataset(split=spec, batch_size=-1))
  images = np.asarray(arrays['image'], np.uint8)
  labels = np.asarray(arrays['label'], np.int32)
  if images.ndim == 3:
    images = images[..., None]
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def load_numpy(settings: DataSettings, split: str, limit: int | None = None):
  """A whole split of a small dataset: (uint8 [N,H,W,C], int32 [N]).

  Cached (read-only) per dataset location and split, so the training,
  bank-fill and evaluation pipelines of one run share one copy.
  """
  return _load_numpy_cached(Location.of(settings), split_spec(split, limit))


def open_source(settings: DataSettings, split: str) -> DataSource:
  """The `DataSource` of `split` (a tfds split name; slices allowed)."""
  if settings.dataset in JPEG_DATASETS:
    return JpegSource(settings, split)
  return ArraySource(*load_numpy(settings, split))


def num_examples(settings: DataSettings, split: str) -> int:
  """Examples of `split` (slices allowed)."""
  return len(open_source(settings, split))


def num_classes(settings: DataSettings) -> int:
  """The classes of the dataset's labels (its tfds features)."""
  return get_builder(settings).info.features['label'].num_classes
