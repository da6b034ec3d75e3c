"""Reads the data fields of the experiment config, with per-dataset defaults.

The documented list of fields is in the docstring of :mod:`smog_jax.data`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import ml_collections

from smog_jax import augment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.228, 0.224, 0.225)  # As in the spec / the reference (not 0.229).

# Per-dataset defaults used for every field the config leaves unset (or None).
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    'fashion_mnist': dict(channels=1, image_size=28, small_image_size=14,
                          mean=(0.2860,), std=(0.3530,), eval_split='test',
                          eval_crop_fraction=1.0),
    'cifar10': dict(channels=3, image_size=32, small_image_size=16,
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                    eval_split='test', eval_crop_fraction=1.0),
    'cifar100': dict(channels=3, image_size=32, small_image_size=16,
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
                     eval_split='test', eval_crop_fraction=1.0),
    'imagenet2012': dict(channels=3, image_size=224, small_image_size=96,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD, eval_split='validation',
                         eval_crop_fraction=224 / 256),
}

# Dataset-independent defaults.
COMMON_DEFAULTS: dict[str, Any] = dict(
    dataset='fashion_mnist',
    data_dir=None,
    fashion_mnist_idx_dir='/usr/share/datasets/fashion-mnist',
    download=True,
    train_split='train',
    train_slice=None,
    random_access='auto',
    num_large_crops=2,
    num_small_crops=4,
    large_scale=(0.2, 1.0),
    small_scale=(0.05, 0.2),
    aspect_ratio=(3 / 4, 4 / 3),
    linear_scale=(0.08, 1.0),
    brightness=0.4,
    contrast=0.4,
    saturation=0.2,
    hue=0.1,
    jitter_prob=0.8,
    grayscale_prob=0.2,
    blur_prob=(1.0, 0.1),
    blur_sigma=(0.1, 2.0),
    solarize_prob=(0.0, 0.2),
    flip_prob=0.5,
    antialias=False,
    eval_batch_size=None,
    prefetch=2,
    shuffle_buffer=10_000,
)


def default_data_config(dataset: str = 'fashion_mnist') -> ml_collections.ConfigDict:
  """Returns ``config.data`` with every field set to its default for ``dataset``."""
  fields = dict(COMMON_DEFAULTS)
  fields.update(DATASET_PRESETS[dataset])
  fields['dataset'] = dataset
  fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()}
  # Fields whose default is None are typed as placeholders so that they can be overridden
  # from the command line with an int / str.
  types = dict(data_dir=str, train_slice=int, eval_batch_size=int)
  for name, typ in types.items():
    if fields[name] is None:
      fields[name] = ml_collections.config_dict.placeholder(typ)
  return ml_collections.ConfigDict(fields)


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """Resolved, immutable data settings (see :mod:`smog_jax.data` for the meaning)."""

  dataset: str
  data_dir: str
  fashion_mnist_idx_dir: str
  download: bool
  train_split: str
  train_slice: Optional[int]
  random_access: Any  # 'auto', True or False.
  channels: int
  image_size: int
  small_image_size: int
  num_large_crops: int
  num_small_crops: int
  large_scale: tuple[float, float]
  small_scale: tuple[float, float]
  aspect_ratio: tuple[float, float]
  linear_scale: tuple[float, float]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  flip_prob: float
  antialias: bool
  augment_spec: augment.AugmentSpec
  eval_split: str
  eval_crop_fraction: float
  batch_size: int
  eval_batch_size: int
  seed: int
  prefetch: int
  shuffle_buffer: int


def _broadcast(values, channels: int, name: str) -> tuple[float, ...]:
  values = tuple(float(v) for v in values)
  if len(values) == channels:
    return values
  if len(values) == 1:
    return values * channels
  if channels == 1:
    # RGB statistics for a grey output: use the luma of the means (a close approximation).
    return (sum(w * v for w, v in zip(augment.LUMA_WEIGHTS, values)),)
  raise ValueError(f'config.data.{name} has {len(values)} values for {channels} channels.')


def _random_access(value) -> Any:
  """'auto' | True | False from a bool or a string ('auto', 'true', 'false', '1', '0')."""
  if isinstance(value, str):
    v = value.strip().lower()
    if v == 'auto':
      return 'auto'
    if v in ('true', '1', 'yes'):
      return True
    if v in ('false', '0', 'no'):
      return False
    raise ValueError(f"config.data.random_access must be 'auto', True or False, got {value!r}.")
  return bool(value)


def resolve(config: ml_collections.ConfigDict) -> DataSettings:
  """Resolves ``config.data``, ``config.batch_size`` and ``config.seed`` into DataSettings."""
  data = config.get('data', None) or ml_collections.ConfigDict()
  dataset = data.get('dataset', None) or COMMON_DEFAULTS['dataset']
  if dataset not in DATASET_PRESETS:
    raise ValueError(f'Unknown dataset {dataset!r}; known: {sorted(DATASET_PRESETS)}.')
  defaults = dict(COMMON_DEFAULTS, **DATASET_PRESETS[dataset])

  def get(name):
    value = data.get(name, None)
    return defaults[name] if value is None else value

  channels = int(get('channels'))
  if channels not in (1, 3):
    raise ValueError(f'config.data.channels must be 1 or 3, got {channels}.')
  blur_prob, solarize_prob = tuple(get('blur_prob')), tuple(get('solarize_prob'))
  pipelines = tuple(
      augment.ColourParams(
          brightness=float(get('brightness')), contrast=float(get('contrast')),
          saturation=float(get('saturation')), hue=float(get('hue')),
          jitter_prob=float(get('jitter_prob')), grayscale_prob=float(get('grayscale_prob')),
          blur_prob=float(blur_prob[i]),
          blur_sigma=tuple(float(v) for v in get('blur_sigma')),
          solarize_prob=float(solarize_prob[i]))
      for i in range(2))
  mean = _broadcast(get('mean'), channels, 'mean')
  std = _broadcast(get('std'), channels, 'std')
  seed = int(config.get('seed', 0))
  batch_size = int(config.batch_size)
  data_dir = get('data_dir') or os.path.join(os.path.expanduser('~'), 'tensorflow_datasets')
  train_slice = get('train_slice')
  return DataSettings(
      dataset=dataset,
      data_dir=os.fspath(data_dir),
      fashion_mnist_idx_dir=os.fspath(get('fashion_mnist_idx_dir')),
      download=bool(get('download')),
      train_split=str(get('train_split')),
      train_slice=None if train_slice is None else int(train_slice),
      random_access=_random_access(get('random_access')),
      channels=channels,
      image_size=int(get('image_size')),
      small_image_size=int(get('small_image_size')),
      num_large_crops=int(get('num_large_crops')),
      num_small_crops=int(get('num_small_crops')),
      large_scale=tuple(get('large_scale')),
      small_scale=tuple(get('small_scale')),
      aspect_ratio=tuple(get('aspect_ratio')),
      linear_scale=tuple(get('linear_scale')),
      mean=mean,
      std=std,
      flip_prob=float(get('flip_prob')),
      antialias=bool(get('antialias')),
      augment_spec=augment.AugmentSpec(pipelines=pipelines, mean=mean, std=std,
                                       channels=channels, seed=seed),
      eval_split=str(get('eval_split')),
      eval_crop_fraction=float(get('eval_crop_fraction')),
      batch_size=batch_size,
      eval_batch_size=int(get('eval_batch_size') or batch_size),
      seed=seed,
      prefetch=int(get('prefetch')),
      shuffle_buffer=int(get('shuffle_buffer')),
  )
