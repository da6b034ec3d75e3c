"""Configs saved by earlier versions (in checkpoints and exports) still
evaluate, export and resume as the runs that wrote them trained."""

import os

import ml_collections
import pytest

import cli_runs
from smog_jax import checkpointing, dry_run, export
from smog_jax.data import settings as data_settings


def _configs():
  """(today's `:tiny` config at 28 px crops, the same as saved before
  `data.large_crop_size` and after `data.shuffle_buffer` existed)."""
  config = dry_run.load_config(
      os.path.join(cli_runs.REPO, 'configs', 'fashion_mnist.py'), 'tiny')
  config.data.large_crop_size = config.data.image_size
  saved = config.to_dict()
  del saved['data']['large_crop_size']
  saved['data']['shuffle_buffer'] = 10_000
  return config, saved


def test_an_earlier_data_config_is_brought_to_todays_fields():
  config, saved = _configs()
  data = ml_collections.ConfigDict(saved).data
  data_settings.upgrade_saved(data)
  assert data.large_crop_size == data.image_size == 28  # What it trained at.
  assert 'shuffle_buffer' not in data
  assert data.to_dict() == config.data.to_dict()
  assert export.preprocessing_from_config(
      ml_collections.ConfigDict(saved))['image_size'] == 28


def test_an_earlier_run_resumes_unless_the_crops_changed():
  config, saved = _configs()
  checkpointing.check_resumable_config(saved, config, 'DIR')
  config.data.large_crop_size = 24
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'data\.large_crop_size: 28 -> 24'):
    checkpointing.check_resumable_config(saved, config, 'DIR')
