"""Checks of a pre-training config before anything is compiled.

Each problem is one sentence naming the field, the value and the fix, raised
as `ConfigError`; `smog_jax.main` prints it without a traceback.
"""

from __future__ import annotations

import ml_collections

from smog_jax import models
from smog_jax import optim
from smog_jax.data import indices
from smog_jax.data import settings as data_settings
from smog_jax.data import sources


class ConfigError(ValueError):
  """A config value the run cannot use; the message says how to fix it."""


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _check_fields(section: str, node: ml_collections.ConfigDict,
                  fields: tuple[str, ...], reader: str) -> None:
  # Overrides cannot add a field, so the fix is in the config file.
  missing = [f for f in fields if f not in node]
  _check(not missing, f'config.{section} lacks {missing}, which {reader} '
         f'reads: add them to config.{section} in the --config file.')


def _check_choices(config: ml_collections.ConfigDict) -> None:
  model, opt, data = config.model, config.optimizer, config.data
  _check(model.backbone in models.BACKBONES,
         f'Unknown backbone {model.backbone!r}: set --config.model.backbone '
         f'to one of {sorted(models.BACKBONES)}.')
  _check(opt.name in optim.OPTIMIZERS,
         f'Unknown optimizer {opt.name!r}: set --config.optimizer.name to one '
         f'of {sorted(optim.OPTIMIZERS)}.')
  _check_fields('model', model, models.required_fields(model),
                f'backbone {model.backbone!r}')
  _check_fields('optimizer', opt, optim.OPTIMIZER_FIELDS[opt.name],
                f'optimizer {opt.name!r}')
  _check(data.dataset in data_settings.DATASETS,
         f'Unknown dataset {data.dataset!r}: set --config.data.dataset to one '
         f'of {sorted(data_settings.DATASETS)}.')


def _check_ranges(config: ml_collections.ConfigDict) -> None:
  opt, smog = config.optimizer, config.smog
  for name in ('start_lr', 'peak_lr'):
    _check(opt[name] > 0, f'config.optimizer.{name}={opt[name]} must be '
           f'positive: set --config.optimizer.{name} to a value > 0.')
  _check(opt.end_lr >= 0, f'config.optimizer.end_lr={opt.end_lr} must not '
         'be negative: set --config.optimizer.end_lr to a value >= 0.')
  _check(smog.temperature > 0, f'config.smog.temperature={smog.temperature} '
         'must be positive: set --config.smog.temperature to a value > 0 '
         '(the reference uses 0.1).')
  momenta = {'smog.ema_momentum': smog.ema_momentum,
             'smog.group_momentum_start': smog.group_momentum_start,
             'smog.group_momentum_end': smog.group_momentum_end}
  if 'momentum' in optim.OPTIMIZER_FIELDS[opt.name]:
    momenta['optimizer.momentum'] = opt.momentum
  for name, value in momenta.items():
    _check(0.0 <= value <= 1.0, f'config.{name}={value} is outside [0, 1]: '
           f'set --config.{name} to a momentum between 0 and 1.')
  for name in ('num_heads', 'num_groups', 'kmeans_iters'):
    _check(smog[name] >= 1, f'config.smog.{name}={smog[name]} must be at '
           f'least 1: set --config.smog.{name}.')


def _check_sizes(config: ml_collections.ConfigDict, num_devices: int,
                 num_processes: int, num_examples: int) -> None:
  batch, data = config.batch_size, config.data
  _check(batch % num_devices == 0,
         f'batch_size={batch} is not divisible by the {num_devices} devices: '
         f'set --config.batch_size to a multiple of {num_devices}.')
  _check(batch % num_processes == 0,
         f'batch_size={batch} is not divisible by the {num_processes} '
         'processes: set --config.batch_size to a multiple of '
         f'{num_processes}.')
  _check(batch <= num_examples or data.dataset != 'folder',
         f'batch_size={batch} exceeds the {num_examples} images that could '
         f'be read under config.data.folder={data.folder!r} (the files '
         'skipped are listed in skipped.tsv beside its prepared copy): add '
         'images, or lower --config.batch_size.')
  _check(batch <= num_examples,
         f'batch_size={batch} exceeds the {num_examples} training examples '
         f'of {data.dataset} (config.data.data_dir={data.data_dir!r}): '
         'lower --config.batch_size, raise --config.data.train_slice, or '
         'point --config.data.data_dir at a complete copy.')
  regroups = config.smog.regroups_per_epoch
  steps = indices.steps_per_epoch(num_examples, batch)
  _check(1 <= regroups <= steps,
         f'config.smog.regroups_per_epoch={regroups} is not between 1 and '
         f'the {steps} steps of an epoch: set --config.smog.regroups_per_epoch '
         'to a value in that range (the reference: 1).')
  groups = config.smog.num_groups
  _check(groups <= num_examples,
         f'config.smog.num_groups={groups} exceeds the {num_examples} rows of '
         'the memory bank (one per training example), so k-means cannot '
         'seed every group: lower --config.smog.num_groups.')
  large, small = data.large_crop_size, data.small_image_size
  _check(small <= large,
         f'config.data.small_image_size={small} exceeds large_crop_size='
         f'{large}: set --config.data.small_image_size <= large_crop_size.')
  native = sources.NATIVE_IMAGE_SIZE.get(data.dataset)
  for name in ('image_size', 'large_crop_size'):
    _check(native is None or data[name] <= native,
           f'config.data.{name}={data[name]} exceeds the {native} px images '
           f'of {data.dataset}: set --config.data.{name} <= {native}.')


def check_folder_labels(data: data_settings.DataSettings, user: str,
                        fix: str) -> None:
  """Refuses a folder whose evaluation split has no class labels.

  Args:
    data: resolved data settings (anything but a folder passes).
    user: what needs the labels, e.g. 'config.knn_every_epochs=10'.
    fix: the first way out, before laying the images out by class.
  """
  if data.dataset != 'folder':
    return
  info = sources.get_builder(data).info
  split = data.eval_split.split('[')[0]
  labelled = getattr(info.features['label'], 'num_classes', None)
  _check(split in info.splits and labelled,
         f'{user} needs class labels in the split {split!r} of '
         f'{data.folder} (its splits: {sorted(info.splits)}, '
         f'{"with" if labelled else "without"} class folders): {fix}, or '
         'lay the images out as train/ and val/, each of one folder per '
         'class.')


def _check_monitor_labels(config: ml_collections.ConfigDict) -> None:
  """A folder's kNN monitor needs class labels in its evaluation split."""
  if config.knn_every_epochs >= 0:
    check_folder_labels(data_settings.resolve(config),
                        f'config.knn_every_epochs={config.knn_every_epochs}',
                        'set --config.knn_every_epochs=-1')


def validate(config: ml_collections.ConfigDict, num_devices: int,
             num_processes: int, num_examples: int) -> None:
  """Raises `ConfigError` for the first value the run cannot use.

  Args:
    config: the pre-training config.
    num_devices: devices of the mesh.
    num_processes: JAX processes.
    num_examples: training examples (rows of the memory bank).
  """
  _check_choices(config)
  _check_ranges(config)
  _check_sizes(config, num_devices, num_processes, num_examples)
  _check_monitor_labels(config)
