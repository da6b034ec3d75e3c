"""End to end: the linear-eval run on synthetic in-memory data."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from smog_jax import checkpointing
from smog_jax import export
from smog_jax.evaluation import fakes
from smog_jax.evaluation import runner

fakes.register_tiny_backbone()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 8


def _load_config(variant):
  spec = importlib.util.spec_from_file_location(
      'linear_eval_config', os.path.join(ROOT, 'configs', 'linear_eval.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def _synthetic(n, seed):
  """Class c lights up row c of an 8x8 image (learnable, flip-invariant)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, n).astype(np.int32)
  images = 0.3 * rng.normal(size=(n, SIZE, SIZE, 1)).astype(np.float32)
  images[np.arange(n), 2 * labels, :, 0] += 2.0
  return images, labels


@pytest.fixture(scope='module')
def data():
  return fakes.ArrayEvalData({'train': _synthetic(72, 0),
                              'test': _synthetic(40, 1)})


@pytest.fixture(scope='module')
def pretrain_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('pretrain'))
  config = fakes.fake_pretraining_config(_tiny_model(), SIZE)
  fakes.write_fake_pretraining_workdir(workdir, config, step=7)
  return workdir


def _tiny_model():
  import ml_collections
  return ml_collections.ConfigDict(dict(
      backbone=fakes.TINY_BACKBONE, width=8, dtype='float32', bn_momentum=0.9,
      projector_hidden_dim=16, predictor_hidden_dim=16, projection_dim=8,
      head_activation='relu'))


def _config(mode, pretrained, epochs=3):
  config = _load_config('fashion_mnist_tiny')
  config.mode = mode
  config.pretrained = pretrained
  config.model = _tiny_model()
  config.batch_size = 16
  config.num_classes = 4
  config.log_every_steps = 2
  config.data.image_size = SIZE
  config.data.train_slice = 64  # 'train[:64]': 64 of the 72 examples.
  config.data.eval_split = 'test'
  config.data.eval_batch_size = 16  # 40 test rows: last batch padded.
  config.linear.epochs = epochs
  config.linear.learning_rate = 0.5
  return config


def _read(workdir):
  with open(os.path.join(workdir, runner.RESULTS_FILE)) as f:
    results = json.load(f)
  with open(os.path.join(workdir, runner.METRICS_FILE)) as f:
    metrics = [json.loads(line) for line in f]
  return results, metrics


def test_fast_mode_from_pretraining_workdir(data, pretrain_dir, tmp_path):
  results = runner.run(_config('fast', pretrain_dir), str(tmp_path), data=data)
  on_disk, metrics = _read(str(tmp_path))
  assert on_disk['top1'] == pytest.approx(results['top1'])
  for key in ('top1', 'top5', 'num_test_examples', 'pretrained',
              'pretrained_step', 'mode', 'wall_clock_seconds'):
    assert key in on_disk
  assert on_disk['pretrained_step'] == 7
  assert on_disk['num_test_examples'] == 40
  assert on_disk['num_train_examples'] == 64
  assert 0.0 <= on_disk['top1'] <= on_disk['top5'] <= 100.0
  assert [m['epoch'] for m in metrics if 'epoch' in m] == [1, 2, 3]
  assert metrics[-1]['final']


def test_pixel_baselines(data, tmp_path):
  knn = runner.run(_config('knn', 'pixels'), str(tmp_path / 'knn'), data=data)
  fast = runner.run(_config('fast', 'pixels', epochs=10),
                    str(tmp_path / 'fast'), data=data)
  assert knn['feature_dim'] == SIZE * SIZE
  assert knn['top1'] >= 90.0 and fast['top1'] >= 90.0
  assert knn['pretrained_step'] == 0


def test_random_backbone_baseline(data, tmp_path):
  results = runner.run(_config('knn', 'random'), str(tmp_path), data=data)
  assert results['pretrained'] == 'random'
  assert results['feature_dim'] == 8


def test_exported_backbone_matches_workdir(data, pretrain_dir, tmp_path):
  out = export.export_backbone(pretrain_dir, str(tmp_path / 'export'))
  a = runner.run(_config('knn', out), str(tmp_path / 'a'), data=data)
  b = runner.run(_config('knn', pretrain_dir), str(tmp_path / 'b'), data=data)
  assert a['top1'] == b['top1'] and a['pretrained_step'] == 7


def test_full_linear_mode_resumes_identically(data, pretrain_dir, tmp_path):
  workdir = str(tmp_path)
  config = _config('linear', pretrain_dir, epochs=2)
  first = runner.run(config, workdir, data=data)
  ckpts = checkpointing.checkpoint_dir(workdir)
  assert sorted(os.listdir(ckpts)) == ['1', '2']
  # Simulate a crash during epoch 2: drop its checkpoint and rerun.
  shutil.rmtree(os.path.join(ckpts, '2'))
  second = runner.run(config, workdir, data=data)
  assert second['top1'] == first['top1'] and second['top5'] == first['top5']
  assert second['steps'] == first['steps'] == 2 * 4  # ceil(64 / 16) per epoch.
  _, metrics = _read(workdir)
  epochs = [m['epoch'] for m in metrics if 'epoch_loss' in m]
  assert epochs == [1, 2, 2]  # The resumed run only trained epoch 2.
  step_logs = [m for m in metrics if 'loss' in m and 'step' in m]
  assert all(np.isfinite(m['loss']) for m in step_logs)
