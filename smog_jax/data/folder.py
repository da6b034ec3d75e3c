"""A folder of images as a dataset: listed, prepared once, read like ImageNet.

`--config.data.dataset=folder --config.data.folder=DIR` trains on every
image under DIR (any depth; hidden files and folders, whose names start
with '.', are left out). Preparation writes them, in sorted path order, as
JPEG bytes in array_record files with tfds metadata, so `JpegSource` reads
them by index as it reads imagenet2012. Into `<data_dir>/smog_folder/`:

  listings/<listing>.tsv      every file's path, size and mtime (ns);
                              `<listing>` is their fingerprint
  <listing>[-short<S>]/1.0.0/ the tfds copy (smog_folder-<split>.array_record)
  <listing>[-short<S>]/skipped.tsv  each file left out, and why

Pixels: every image becomes RGB uint8 the way torchvision's ImageFolder
loader (the reference's) does it, PIL's `convert('RGB')`: grey replicated,
palette looked up, alpha dropped, CMYK by PIL's conversion, GIFs their
first frame; except 16- and 32-bit grey, which PIL's conversion would clip
at 255, scaled by 255 / 65535. EXIF orientation is applied. An RGB or grey
JPEG that needs none of this is kept byte for byte; any other image is
re-encoded as JPEG of quality `JPEG_QUALITY`.

Files PIL cannot decode in full (zero-byte, truncated, corrupt, not an
image, unreadable) are skipped, as are decompression bombs: non-JPEG images
of more than `MAX_PIXELS` pixels, JPEGs that even at 1/8 scale would decode
to more than 4x that (and whatever PIL itself refuses, over
`PIL.Image.MAX_IMAGE_PIXELS` x 2). A JPEG of more than `MAX_PIXELS` is
decoded at the largest reduction of its DCT scaling (1/2 .. 1/8) that stays
above the bound, then shrunk under it; every stored image has at most
`MAX_PIXELS` pixels.

Labels: when every image file (by its suffix, `IMAGE_SUFFIXES`) lies in a
sub-folder, each top-level sub-folder is a class (sorted names); when the
top level holds only `train/` and `val/`, those are the splits 'train' and
'val', each of class folders. Otherwise the folder is label-free (every
label -1) and has the split 'train' only.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import io
import math
import multiprocessing
import os
import shutil
import time
import uuid

import numpy as np
from PIL import Image
from PIL import ImageOps

from smog_jax import console
from smog_jax.data.sources import DataNotFoundError

NAME = 'smog_folder'  # The tfds name of a prepared folder.
VERSION = '1.0.0'
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.tif',
                  '.tiff')
SPLIT_FOLDERS = ('train', 'val')
# 8192 x 8192, 192 MiB of RGB pixels: the most a stored image has, and a
# preparing process decodes (a larger JPEG: at most 4x that).
MAX_PIXELS = 1 << 26
JPEG_QUALITY = 95
UNLABELLED = -1
SKIPPED_FILE = 'skipped.tsv'
_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'
_EXAMPLES_PER_TASK = 8  # Images a preparing process encodes per task.
_ORIENTATION = 0x0112  # The EXIF tag.


class FolderError(DataNotFoundError):
  """The folder cannot be a dataset; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One file of the folder: its path below it ('/'-separated), size, mtime."""
  path: str
  size: int
  mtime_ns: int

  def line(self) -> str:
    return f'{self.path}\t{self.size}\t{self.mtime_ns}'


def list_folder(folder: str) -> tuple[Entry, ...]:
  """Every non-hidden file under `folder`, sorted by path."""
  if not os.path.isdir(folder):
    raise FolderError(f'config.data.folder={folder!r} is not a folder: set '
                      '--config.data.folder to the folder of your images.')
  entries = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    for name in files:
      if name.startswith('.'):
        continue
      path = os.path.join(root, name)
      try:
        stat = os.stat(path)
      except OSError:  # A broken link: listed, skipped as unreadable.
        stat = os.lstat(path)
      entries.append(Entry(os.path.relpath(path, folder).replace(os.sep, '/'),
                           stat.st_size, stat.st_mtime_ns))
  return tuple(sorted(entries, key=lambda e: e.path))


def fingerprint(entries: tuple[Entry, ...]) -> str:
  """16 hex digits identifying the listing (paths, sizes, mtimes)."""
  digest = hashlib.sha256()
  for entry in entries:
    digest.update(entry.line().encode('utf-8', 'surrogateescape') + b'\n')
  return digest.hexdigest()[:16]


def listing_difference(old: tuple[Entry, ...], new: tuple[Entry, ...],
                       shown: int = 3) -> str:
  """'2 files added (a.jpg, b.png), 1 modified (c.jpg)': `old` -> `new`."""
  before = {e.path: e for e in old}
  after = {e.path: e for e in new}
  kinds = (('added', sorted(after.keys() - before.keys())),
           ('removed', sorted(before.keys() - after.keys())),
           ('modified', sorted(p for p in before.keys() & after.keys()
                               if before[p] != after[p])))
  parts = []
  for kind, paths in kinds:
    if paths:
      names = ', '.join(paths[:shown]) + (', ...' if len(paths) > shown
                                           else '')
      parts.append(f'{len(paths)} file{"s" * (len(paths) > 1)} {kind} '
                   f'({names})')
  return ', '.join(parts) or 'no file differs'


@dataclasses.dataclass(frozen=True)
class Layout:
  """Which split and label each entry has (splits and labels: see above)."""
  splits: tuple[str, ...]  # Per entry.
  labels: tuple[int, ...]  # Per entry; UNLABELLED without class folders.
  classes: tuple[str, ...]  # Empty when label-free.


def layout(entries: tuple[Entry, ...]) -> Layout:
  """The splits and labels of `entries` (rules: the module docstring)."""
  parts = [e.path.split('/') for e in entries]
  images = [p for p in parts if p[-1].lower().endswith(IMAGE_SUFFIXES)]
  split_folders = (bool(images) and {p[0] for p in parts} <=
                   set(SPLIT_FOLDERS) and all(len(p) > 1 for p in parts))
  if split_folders:
    splits = [p[0] for p in parts]
    parts = [p[1:] for p in parts]
    images = [p[1:] for p in images]
  else:
    splits = ['train'] * len(parts)
  labelled = bool(images) and all(len(p) > 1 for p in images)
  classes = sorted({p[0] for p in images}) if labelled else []
  index = {name: i for i, name in enumerate(classes)}
  labels = [index.get(p[0], UNLABELLED) if len(p) > 1 else UNLABELLED
            for p in parts]
  return Layout(tuple(splits), tuple(labels), tuple(classes))


# Decoding, in the preparing processes (PIL and NumPy only).


def to_rgb(image: Image.Image) -> Image.Image:
  """RGB uint8 pixels of `image` (the rules: the module docstring)."""
  if image.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N'):
    grey = np.asarray(image, np.float64) * (255 / 65535)
    return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)
                           ).convert('RGB')
  return image.convert('RGB')


def _shrink_size(width: int, height: int, short_side: int | None
                 ) -> tuple[int, int]:
  """The stored size: short side at most `short_side`, pixels at most
  `MAX_PIXELS`."""
  bound = (MAX_PIXELS / (width * height)) ** 0.5
  short = math.inf if short_side is None else short_side / min(width, height)
  if min(bound, short) >= 1:
    return width, height
  if short <= bound:
    return round(width * short), round(height * short)
  return max(1, int(width * bound)), max(1, int(height * bound))


def _decoded(image: Image.Image, short_side: int | None
             ) -> tuple[Image.Image, bool]:
  """`(pixels, changed)`: decoded, oriented and shrunk; whether they differ
  from what the file's bytes decode to as RGB or grey."""
  original = image.size
  wanted = _shrink_size(*original, short_side)
  if image.format == 'JPEG' and wanted != original:
    image.draft('RGB', wanted)  # DCT scaling: decodes at 1/2 .. 1/8 scale.
  # A JPEG decodes at the DCT scale just above the stored size: at most 4x
  # its pixels.
  if image.width * image.height > MAX_PIXELS * (
      4 if image.format == 'JPEG' else 1):
    raise ValueError(f'decompression bomb: {image.width} x {image.height} '
                     'pixels to decode')
  image.load()
  pixels = image
  if image.getexif().get(_ORIENTATION, 1) != 1:
    pixels = ImageOps.exif_transpose(image)
  size = _shrink_size(*pixels.size, short_side)
  if size != pixels.size:
    pixels = pixels.resize(size, Image.Resampling.BILINEAR)
  changed = (pixels is not image or image.size != original or
             image.format != 'JPEG' or image.mode not in ('RGB', 'L'))
  return pixels, changed


def encode(path: str, short_side: int | None) -> tuple[bytes | None, str]:
  """`(JPEG bytes, '')` of the image at `path`, or `(None, why skipped)`."""
  try:
    with open(path, 'rb') as f:
      raw = f.read()
    if not raw:
      return None, 'empty file'
    with Image.open(io.BytesIO(raw)) as image:
      pixels, changed = _decoded(image, short_side)
      if not changed:
        return raw, ''
      out = io.BytesIO()
      to_rgb(pixels).save(out, 'JPEG', quality=JPEG_QUALITY)
      return out.getvalue(), ''
  except Image.UnidentifiedImageError:
    return None, 'not an image that PIL can read'
  except Exception as e:  # pylint: disable=broad-except
    return None, f'{type(e).__name__}: {e}'.replace('\t', ' ').replace(
        '\n', ' ')


def _encode_task(task: tuple[list[str], int | None]):
  paths, short_side = task
  return [encode(path, short_side) for path in paths]


def _encoded(folder: str, entries: tuple[Entry, ...],
             short_side: int | None, workers: int):
  """`(JPEG bytes or None, why skipped)` of each entry, in order.

  `workers` processes encode; at most `4 * workers` tasks are in flight,
  so memory stays bounded whatever the folder's size.
  """
  paths = [os.path.join(folder, *e.path.split('/')) for e in entries]
  tasks = [(paths[i:i + _EXAMPLES_PER_TASK], short_side)
           for i in range(0, len(paths), _EXAMPLES_PER_TASK)]
  # 'spawn': the parent may hold TensorFlow's or JAX's threads, which a
  # forked child would inherit stopped.
  with multiprocessing.get_context('spawn').Pool(workers) as pool:
    pending = collections.deque()
    for n, task in enumerate(tasks, 1):
      pending.append(pool.apply_async(_encode_task, (task,)))
      while pending and (len(pending) > 4 * workers or n == len(tasks)):
        yield from pending.popleft().get()


class _Progress:
  """Logs how far preparation is, every `every_secs` and at the end."""

  def __init__(self, folder: str, total: int, every_secs: float = 10.0):
    self.folder, self.total, self.every = folder, total, every_secs
    self.start = self.last = time.time()
    self.done = self.skipped = 0

  def __call__(self, skipped: bool, final: bool = False) -> None:
    self.done += not final
    self.skipped += skipped
    now = time.time()
    if final or now - self.last >= self.every:
      self.last = now
      console.show('Preparing %s: %d / %d files (%.0f/s), %d skipped.',
                   self.folder, self.done, self.total,
                   self.done / max(now - self.start, 1e-9), self.skipped)


def features_of(classes: tuple[str, ...]):
  """The tfds features: JPEG image and a class (or -1 without classes)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  label = (tfds.features.ClassLabel(names=list(classes)) if classes else
           tfds.features.Scalar(np.int64))
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3),
                                   encoding_format='jpeg'),
      'label': label})


def _write_examples(folder: str, entries: tuple[Entry, ...], where: Layout,
                    short_side: int | None, workers: int, out: str,
                    features) -> tuple[dict, list[str]]:
  """Writes each split's array_record file into `out`.

  Returns:
    `({split: (examples, bytes)}, skipped lines 'path<TAB>why')`.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  writers, counts, skipped = {}, {}, []
  progress = _Progress(folder, len(entries))
  split_of = {e.path: (s, y) for e, s, y in
              zip(entries, where.splits, where.labels)}
  encoded_all = _encoded(folder, entries, short_side, workers)
  for entry, (encoded, reason) in zip(entries, encoded_all):
    progress(encoded is None)
    if encoded is None:
      skipped.append(f'{entry.path}\t{reason}')
      continue
    split, label = split_of[entry.path]
    if split not in writers:
      writers[split] = array_record_module.ArrayRecordWriter(
          os.path.join(out, _TEMPLATE.format(
              DATASET=NAME, SPLIT=split, FILEFORMAT='array_record',
              SHARD_X_OF_Y='00000-of-00001')), 'group_size:1')
      counts[split] = [0, 0]
    record = features.serialize_example({'image': encoded, 'label': label})
    writers[split].write(record)
    counts[split][0] += 1
    counts[split][1] += len(record)
  progress(False, final=True)
  for writer in writers.values():
    writer.close()
  return counts, skipped


def data_root(data_dir: str | None) -> str:
  """`<data_dir>/smog_folder` (data_dir None: tfds's default)."""
  if data_dir is None:
    from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
    data_dir = constants.get_default_data_dir()
  return os.path.join(os.path.expanduser(data_dir), NAME)


def _write_atomically(path: str, text: str) -> None:
  """Writes `path` whole or not at all (another process may write it too)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.incomplete-{uuid.uuid4().hex}'
  with open(tmp, 'w', encoding='utf-8', errors='surrogateescape') as f:
    f.write(text)
  os.replace(tmp, path)


def listing_path(root: str, listing: str) -> str:
  return os.path.join(root, 'listings', f'{listing}.tsv')


def record_listing(root: str, entries: tuple[Entry, ...]) -> str:
  """Writes the listing of `entries` under `root` once; its fingerprint."""
  listing = fingerprint(entries)
  path = listing_path(root, listing)
  if not os.path.exists(path):
    _write_atomically(path, ''.join(e.line() + '\n' for e in entries))
  return listing


def read_listing(root: str, listing: str) -> tuple[Entry, ...] | None:
  """The entries of a recorded listing; None if it was never recorded."""
  path = listing_path(root, listing)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8', errors='surrogateescape') as f:
    rows = [line.rstrip('\n').split('\t') for line in f]
  return tuple(Entry(p, int(size), int(mtime)) for p, size, mtime in rows)


def prepared_dir(root: str, listing: str, short_side: int | None) -> str:
  """The folder of a listing's prepared copy (its tfds copy in VERSION/)."""
  suffix = '' if short_side is None else f'-short{short_side}'
  return os.path.join(root, listing + suffix)


def _no_images(folder: str, total: int, skipped: list[str]) -> str:
  reasons = '; '.join(line.replace('\t', ': ') for line in skipped[:3])
  return (f'{folder} holds no image that can be read ({total} files, '
          f'{len(skipped)} skipped{": " + reasons if reasons else ""}'
          f'{", ..." if len(skipped) > 3 else ""}): put images (JPEG, PNG, '
          'WebP, BMP, GIF, TIFF) under it, or set --config.data.folder to '
          'the folder that holds them.')


def _write_metadata(out: str, folder: str, features, counts: dict) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  splits = [tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=b)
            for split, (n, b) in counts.items()]
  # check_data=False: tfds would re-read the files through tf.data, which
  # array_record files do not support.
  tfds.folder_dataset.write_metadata(
      data_dir=out, features=features, split_infos=splits, version=VERSION,
      filename_template=_TEMPLATE, check_data=False,
      description=f'The images under {folder}, prepared by smog_jax.')


def _prepare_into(folder: str, entries: tuple[Entry, ...],
                  short_side: int | None, workers: int, out: str) -> None:
  """Writes the prepared copy of `entries` to `out`, whole or not at all."""
  where = layout(entries)
  features = features_of(where.classes)
  tmp = f'{out}.incomplete-{uuid.uuid4().hex}'
  os.makedirs(os.path.join(tmp, VERSION))
  counts, skipped = _write_examples(folder, entries, where, short_side,
                                    workers, os.path.join(tmp, VERSION),
                                    features)
  if 'train' not in counts:
    shutil.rmtree(tmp)
    raise FolderError(_no_images(folder, len(entries), skipped))
  _write_atomically(os.path.join(tmp, SKIPPED_FILE),
                    ''.join(line + '\n' for line in skipped))
  _write_metadata(os.path.join(tmp, VERSION), folder, features, counts)
  images = ', '.join(f'{n:,} {split}' for split, (n, _) in counts.items())
  console.show('Prepared %s into %s: images %s; %s skipped (listed in %s).',
               folder, out, images, f'{len(skipped):,} file(s)',
               os.path.join(out, SKIPPED_FILE))
  try:
    os.rename(tmp, out)
  except OSError:  # Another process finished first.
    shutil.rmtree(tmp)


@functools.lru_cache(maxsize=8)
def _listed(folder: str) -> tuple[Entry, ...]:
  """The folder's listing, read once per process."""
  return list_folder(folder)


def _required(folder: str | None) -> str:
  if folder is None:
    raise FolderError("config.data.dataset='folder' reads the images under "
                      'config.data.folder, which is not set: pass '
                      '--config.data.folder=DIR.')
  return os.path.abspath(os.path.expanduser(folder))


def listing_change(data_dir: str | None, old: str, new: str) -> str:
  """What differs between two recorded listings, in words."""
  root = data_root(data_dir)
  before, after = read_listing(root, old), read_listing(root, new)
  if before is None or after is None:
    return f'listing {old} -> {new}'
  return f'the folder changed since: {listing_difference(before, after)}'


@functools.lru_cache(maxsize=8)
def _prepared(folder: str, data_dir: str | None, pinned: str | None,
              short_side: int | None, workers: int) -> str:
  entries = _listed(folder)
  root = data_root(data_dir)
  listing = record_listing(root, entries)
  if pinned is not None and pinned != listing:
    raise FolderError(
        f'{folder} differs from the listing {pinned} that config.data.'
        f'folder_listing names ({listing_change(data_dir, pinned, listing)}):'
        ' restore those files, or start a new run on the folder as it is '
        f'(--config.data.folder_listing={listing}).')
  out = prepared_dir(root, listing, short_side)
  if not os.path.exists(os.path.join(out, VERSION, 'dataset_info.json')):
    _prepare_into(folder, entries, short_side, workers, out)
  return os.path.join(out, VERSION)


def prepare(folder: str | None, data_dir: str | None,
            short_side: int | None, listing: str | None = None,
            workers: int | None = None) -> str:
  """Prepares `folder` into `data_dir` unless done; the tfds copy's folder.

  Args:
    folder: the images' folder.
    data_dir: tfds data dir (None: tfds's default).
    short_side: shrink images whose short side exceeds it (None: keep).
    listing: the listing the folder must have (None: as it is now).
    workers: preparing processes (None: one per core of this process).

  Raises:
    FolderError: no folder, it changed from `listing`, or no image in it.
  """
  if workers is None:
    workers = len(os.sched_getaffinity(0))
  return _prepared(_required(folder), data_dir, listing, short_side,
                   workers)


def builder(settings):
  """The tfds builder of the prepared folder of `settings` (a DataSettings),
  prepared on first use."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.builder_from_directory(prepare(
      settings.folder, settings.data_dir, settings.folder_short_side,
      settings.folder_listing))


def pin_listing(config) -> None:
  """Sets `config.data.folder_listing`, if unset, to the folder's listing.

  `smog_jax.trainer` calls it first, so the checkpoints' config names the
  listing the run trained on and a resume on a changed folder is refused.
  """
  data = config.data
  if data.dataset != 'folder' or data.folder_listing is not None:
    return
  data.folder_listing = record_listing(data_root(data.data_dir),
                                       _listed(_required(data.folder)))
