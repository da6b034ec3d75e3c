"""The data fields of the experiment config: their defaults and their reading.

`default_data_config` is the one place that owns the defaults; `resolve`
reads every field of `config.data` as it is, and rejects unknown or missing
ones.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from smog_jax import augment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.228, 0.224, 0.225)  # As the spec and the reference.


# Per-dataset defaults of `config.data` (their meanings: default_data_config).
_PRESETS = {
    'fashion_mnist': dict(
        channels=1, image_size=28, small_image_size=14, mean=(0.2860,),
        std=(0.3530,), train_split='train', eval_split='test',
        eval_crop_fraction=1.0),
    'cifar10': dict(
        channels=3, image_size=32, small_image_size=16,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        train_split='train', eval_split='test', eval_crop_fraction=1.0),
    'cifar100': dict(
        channels=3, image_size=32, small_image_size=16,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        train_split='train', eval_split='test', eval_crop_fraction=1.0),
    # Pre-training on the 100,000 unlabelled images; 'train' (5,000) and
    # 'test' (8,000) are labelled. Statistics of the unlabelled split.
    'stl10': dict(
        channels=3, image_size=96, small_image_size=48,
        mean=(0.4408, 0.4279, 0.3867), std=(0.2683, 0.2610, 0.2687),
        train_split='unlabelled', eval_split='test', eval_crop_fraction=1.0),
    'imagenet2012': dict(
        channels=3, image_size=224, small_image_size=96, mean=IMAGENET_MEAN,
        std=IMAGENET_STD, train_split='train', eval_split='validation',
        eval_crop_fraction=224 / 256),
    # Any folder of images (smog_jax.data.folder): ImageNet's sizes and
    # statistics, the usual start for photographs; 'val' is the split of a
    # folder laid out as train/ and val/.
    'folder': dict(
        channels=3, image_size=224, small_image_size=96, mean=IMAGENET_MEAN,
        std=IMAGENET_STD, train_split='train', eval_split='val',
        eval_crop_fraction=224 / 256),
}
DATASETS = tuple(_PRESETS)
# The records of augmentation pipelines A and B (`augment.ColourParams`).
PIPELINES = ('pipeline_a', 'pipeline_b')
# Fields that configs saved by earlier versions may still carry, and the
# fields they lack, each with the field whose value those versions used.
# (Those versions also kept the colour fields flat, `blur_prob` and
# `solarize_prob` as (A, B) pairs: `upgrade_saved` makes the two records.)
RETIRED_FIELDS = ('random_access', 'shuffle_buffer')
ADDED_FIELDS = {'large_crop_size': 'image_size'}
# Fields added since, with the value every earlier run had.
ADDED_VALUES = {'folder': None, 'folder_listing': None,
                'folder_short_side': None}
# Fields that never change what a run computes: a resumed run may always
# change them (smog_jax.recipes).
# (A folder may move: its listing, which a run may not change, is of the
# paths below it.)
OPERATIONAL_FIELDS = ('data_dir', 'fashion_mnist_idx_dir', 'download',
                      'prefetch', 'eval_batch_size', 'folder')


def _colour(blur_prob: float, solarize_prob: float
            ) -> ml_collections.ConfigDict:
  """One pipeline's record (the fields of `augment.ColourParams`)."""
  return ml_collections.ConfigDict(dict(
      # Colour jitter with probability jitter_prob (factors in 1 +- x; hue
      # in turns), then grey, blur and solarize, each with its probability.
      brightness=0.4,
      contrast=0.4,
      saturation=0.2,
      hue=0.1,
      jitter_prob=0.8,
      grayscale_prob=0.2,
      blur_prob=blur_prob,
      blur_sigma=[0.1, 2.0],  # Pixels of the crop.
      solarize_prob=solarize_prob))


def default_data_config(dataset: str = 'fashion_mnist'
                        ) -> ml_collections.ConfigDict:
  """`config.data` with every field at its default for `dataset`.

  Args:
    dataset: one of `DATASETS` (tfds names).

  Returns:
    A ConfigDict; the comments below give each field's meaning.
  """
  if dataset not in _PRESETS:
    raise ValueError(f'Unknown dataset {dataset!r}; known: {DATASETS}.')
  preset = _PRESETS[dataset]
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict(dict(
      dataset=dataset,
      # tfds data dir (gs:// works); None: tfds's own default.
      data_dir=placeholder(str),
      # Fashion-MNIST IDX files to build the tfds copy from offline.
      fashion_mnist_idx_dir='/usr/share/datasets/fashion-mnist',
      download=True,  # Let tfds download a dataset that is not prepared.
      # Dataset 'folder': the images' folder (prepared into data_dir on
      # first use, or by python -m smog_jax.prepare).
      folder=placeholder(str),
      # The fingerprint of the folder's listing (paths, sizes, mtimes) the
      # run trains on; None: the folder as it is when the run starts.
      folder_listing=placeholder(str),
      # Preparation shrinks images whose short side exceeds this; None:
      # full size (under smog_jax.data.folder.MAX_PIXELS).
      folder_short_side=placeholder(int),
      train_split=preset['train_split'],
      train_slice=placeholder(int),  # Only the first N training examples.
      # Output channels C (grey sources are replicated, RGB made grey).
      channels=preset['channels'],
      # S: the evaluation images (kNN monitor, linear probe, export).
      image_size=preset['image_size'],
      # The large training crops' side; below S the network trains at a
      # lower resolution than its features are used at (FixRes).
      large_crop_size=preset['image_size'],
      small_image_size=preset['small_image_size'],  # s: small crops.
      num_large_crops=2,
      num_small_crops=4,  # Online pipeline only; may be 0.
      large_scale=[0.2, 1.0],  # Random-resized-crop area ranges.
      small_scale=[0.05, 0.2],
      linear_scale=[0.08, 1.0],  # The linear probe's training crops.
      aspect_ratio=[3 / 4, 4 / 3],
      # The photometric augmentation of pipelines A and B, on the device:
      # the reference's, which differ only in blur and solarization.
      pipeline_a=_colour(blur_prob=1.0, solarize_prob=0.0),
      pipeline_b=_colour(blur_prob=0.1, solarize_prob=0.2),
      flip_prob=0.5,
      antialias=False,  # PIL-like antialiased resize of training crops.
      # Per channel; one value is broadcast, RGB values of a grey output
      # become their luma.
      mean=list(preset['mean']),
      std=list(preset['std']),
      eval_split=preset['eval_split'],
      # Centre-crop side / short side.
      eval_crop_fraction=preset['eval_crop_fraction'],
      eval_batch_size=placeholder(int),  # None: config.batch_size.
      prefetch=2,  # Global batches in flight to the devices.
  ))


def upgrade_saved(data: ml_collections.ConfigDict) -> None:
  """Brings a `config.data` saved by an earlier version to today's fields.

  In place: retired fields are dropped, added ones take the value that
  version used, so its runs evaluate and export as they trained.
  """
  with data.unlocked():
    for name in RETIRED_FIELDS:
      if name in data:
        del data[name]
    for name, used in ADDED_FIELDS.items():
      if name not in data:
        data[name] = data[used]
    for name, value in ADDED_VALUES.items():
      if name not in data:
        data[name] = value
    if PIPELINES[0] not in data:
      for i, pipeline in enumerate(PIPELINES):
        data[pipeline] = ml_collections.ConfigDict({
            name: data[name][i] if name in _PAIRED else data[name]
            for name in _COLOUR})
      for name in _COLOUR:
        del data[name]


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """`config.data` as read by `resolve`, with `batch_size` and `seed`.

  The fields are those of `default_data_config` (the pipelines' records
  make `augment_spec`); lists become tuples, `mean`/`std` have `channels`
  values and `eval_batch_size` is set.
  """

  dataset: str
  data_dir: str | None
  fashion_mnist_idx_dir: str
  download: bool
  folder: str | None
  folder_listing: str | None
  folder_short_side: int | None
  train_split: str
  train_slice: int | None
  channels: int
  image_size: int
  large_crop_size: int
  small_image_size: int
  num_large_crops: int
  num_small_crops: int
  large_scale: tuple[float, float]
  small_scale: tuple[float, float]
  linear_scale: tuple[float, float]
  aspect_ratio: tuple[float, float]
  flip_prob: float
  antialias: bool
  mean: tuple[float, ...]
  std: tuple[float, ...]
  eval_split: str
  eval_crop_fraction: float
  eval_batch_size: int
  prefetch: int
  batch_size: int
  seed: int
  augment_spec: augment.AugmentSpec  # From the pipelines' records.


# The fields of a pipeline's record; earlier versions' flat fields held
# these two as (A, B) pairs.
_COLOUR = tuple(f.name for f in dataclasses.fields(augment.ColourParams))
_PAIRED = ('blur_prob', 'solarize_prob')
_HOST = tuple(f.name for f in dataclasses.fields(DataSettings)
              if f.name not in ('batch_size', 'seed', 'augment_spec'))
_FIELDS = _HOST + PIPELINES


def _per_channel(values, channels: int, name: str) -> tuple[float, ...]:
  values = tuple(float(v) for v in values)
  if len(values) == channels:
    return values
  if len(values) == 1:
    return values * channels
  if channels == 1:
    return (sum(w * v for w, v in zip(augment.LUMA_WEIGHTS, values)),)
  raise ValueError(f'config.data.{name} has {len(values)} values for '
                   f'{channels} channels: give 1 or {channels}.')


def _fields(record: ml_collections.ConfigDict, names: tuple[str, ...],
            where: str) -> dict:
  """`names` of `record` (lists as tuples); unknown or missing ones raise."""
  unknown = sorted(set(record.keys()) - set(names))
  missing = [name for name in names if name not in record]
  if unknown or missing:
    raise ValueError(
        f'{where} has unknown fields {unknown} and lacks {missing}: '
        'build it with smog_jax.data.default_data_config(dataset).')
  return {name: tuple(record[name])
          if isinstance(record[name], (list, tuple)) else record[name]
          for name in names}


def resolve(config: ml_collections.ConfigDict) -> DataSettings:
  """Reads `config.data`, `config.batch_size` and `config.seed`."""
  fields = _fields(config.data, _FIELDS, 'config.data')
  if fields['channels'] not in (1, 3):
    raise ValueError(f'config.data.channels must be 1 or 3, got '
                     f'{fields["channels"]}.')
  for name in ('mean', 'std'):
    fields[name] = _per_channel(fields[name], fields['channels'], name)
  if fields['eval_batch_size'] is None:
    fields['eval_batch_size'] = config.batch_size
  pipelines = tuple(augment.ColourParams(**_fields(
      fields[name], _COLOUR, f'config.data.{name}')) for name in PIPELINES)
  spec = augment.AugmentSpec(pipelines=pipelines, mean=fields['mean'],
                             std=fields['std'], channels=fields['channels'],
                             seed=config.seed)
  return DataSettings(**{name: fields[name] for name in _HOST},
                      batch_size=config.batch_size, seed=config.seed,
                      augment_spec=spec)
