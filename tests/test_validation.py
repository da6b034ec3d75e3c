"""Config validation: each bad value is one clear sentence, before compiling."""

import os

import pytest

import cli_runs
from smog_jax import recipes
from smog_jax import validation


def _config(**changes):
  config = recipes.load_config(
      os.path.join(cli_runs.REPO, 'configs', 'fashion_mnist.py'), 'tiny')
  for path, value in changes.items():
    *parents, name = path.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[name] = value
  return config


def _error(config, devices=8, processes=1, examples=64):
  with pytest.raises(validation.ConfigError) as info:
    validation.validate(config, devices, processes, examples)
  message = str(info.value)
  assert message.count('. ') == 0 and message.endswith('.'), message
  return message


def test_the_tiny_config_is_valid():
  validation.validate(_config(), 8, 2, 64)


@pytest.mark.parametrize('changes,devices,processes,examples,words', [
    (dict(batch_size=12), 8, 1, 64, ['batch_size=12', '8 devices',
                                     'multiple of 8']),
    (dict(batch_size=16), 1, 3, 64, ['3 processes']),
    (dict(batch_size=128), 8, 1, 64, ['exceeds the 64 training examples']),
    ({'smog.num_groups': 100}, 8, 1, 64, ['num_groups=100', '64 rows']),
    ({'smog.regroups_per_epoch': 5}, 8, 1, 64, ['regroups_per_epoch=5',
                                                '4 steps of an epoch']),
    ({'smog.regroups_per_epoch': 0}, 8, 1, 64, ['regroups_per_epoch=0']),
    ({'data.small_image_size': 40}, 8, 1, 64, ['small_image_size=40']),
    ({'data.image_size': 56}, 8, 1, 64, ['image_size=56', '28 px']),
    ({'data.large_crop_size': 56}, 8, 1, 64, ['large_crop_size=56', '28 px']),
    ({'data.large_crop_size': 12}, 8, 1, 64, ['small_image_size=14',
                                              'large_crop_size=12']),
    ({'model.backbone': 'resnet9000'}, 8, 1, 64, ["'resnet9000'",
                                                   'resnet50']),
    ({'optimizer.name': 'rmsprop'}, 8, 1, 64, ["'rmsprop'", 'lars']),
    ({'data.dataset': 'mnist'}, 8, 1, 64, ["'mnist'", 'fashion_mnist']),
    ({'optimizer.peak_lr': 0.0}, 8, 1, 64, ['peak_lr=0.0', 'positive']),
    ({'optimizer.start_lr': -1.0}, 8, 1, 64, ['start_lr=-1.0']),
    ({'smog.temperature': 0.0}, 8, 1, 64, ['temperature=0.0']),
    ({'smog.ema_momentum': 1.5}, 8, 1, 64, ['ema_momentum=1.5', '[0, 1]']),
    ({'smog.group_momentum_end': -0.1}, 8, 1, 64, ['group_momentum_end']),
    ({'optimizer.momentum': 2.0}, 8, 1, 64, ['optimizer.momentum=2.0']),
])
def test_each_bad_value_is_named_with_its_fix(changes, devices, processes,
                                              examples, words):
  message = _error(_config(**changes), devices, processes, examples)
  for word in words:
    assert word in message, message
  assert '--config.' in message  # The fix names the flag to set.


@pytest.mark.parametrize('section,field,words', [
    ('optimizer', 'trust_coefficient',
     ["config.optimizer lacks ['trust_coefficient']", "optimizer 'lars'"]),
    ('model', 'kernel_init',
     ["config.model lacks ['kernel_init']", "backbone 'resnet'"]),
    ('model', 'head_activation', ["lacks ['head_activation']"]),
])
def test_a_field_the_config_lacks_is_named(section, field, words):
  config = _config()
  with config[section].unlocked():
    del config[section][field]
  message = _error(config)
  for word in words:
    assert word in message, message
  assert 'the --config file' in message


def test_gelu_heads_need_their_approximation_field():
  message = _error(_config(**{'model.head_activation': 'gelu'}))
  assert "config.model lacks ['head_gelu_approximate']" in message, message


def test_main_prints_one_sentence_without_a_traceback(tmp_path):
  proc = cli_runs.run_main(
      tmp_path, '--config.smog.temperature=-1',
      f'--config.data.data_dir={tmp_path / "tfds"}',
      f'--config.data.fashion_mnist_idx_dir={cli_runs.FIXTURE}')
  assert proc.returncode == 1
  assert 'Traceback' not in proc.stderr
  assert ('smog_jax.main: config.smog.temperature=-1.0 must be positive'
          in proc.stderr), proc.stderr[-2000:]
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_missing_data_is_one_sentence_naming_the_ways(tmp_path):
  proc = cli_runs.run_main(
      tmp_path, f'--config.data.data_dir={tmp_path / "empty"}',
      f'--config.data.fashion_mnist_idx_dir={tmp_path / "none"}',
      '--config.data.download=False')
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  line = [l for l in proc.stderr.splitlines() if 'smog_jax.main:' in l]
  assert len(line) == 1 and 'dataset-fashion-mnist' in line[0], line
