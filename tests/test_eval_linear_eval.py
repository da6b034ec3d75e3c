"""End to end: the linear-eval run on the committed Fashion-MNIST fixture
with the `:tiny` ResNet of configs/fashion_mnist.py."""

import gzip
import json
import os
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

import eval_fixtures
from smog_jax import checkpointing
from smog_jax import data as data_lib
from smog_jax import export
from smog_jax import jsonl
from smog_jax import sharding
from smog_jax import trainer
from smog_jax.evaluation import runner

N = 64  # Examples per split in the fixture.


@pytest.fixture(name='data_dir')
def _data_dir(fixture_data_dir):
  return fixture_data_dir


def _config(mode, pretrained, data_dir, epochs=3):
  config = eval_fixtures.load_config('linear_eval', 'fashion_mnist_tiny')
  eval_fixtures.use_fixture(config, data_dir)
  config.mode = mode
  config.pretrained = pretrained
  config.model = eval_fixtures.load_config('fashion_mnist', 'tiny').model
  config.batch_size = 16
  config.log_every_steps = 2
  config.data.train_slice = None
  config.data.eval_split = 'test'
  config.data.eval_batch_size = 16
  config.linear.epochs = epochs
  config.linear.learning_rate = 0.5
  return config


def _read(workdir):
  with open(os.path.join(workdir, runner.RESULTS_FILE)) as f:
    results = json.load(f)
  with open(os.path.join(workdir, jsonl.METRICS_FILE)) as f:
    metrics = [json.loads(line) for line in f]
  return results, metrics


def _pixels(split):
  """Independent IDX reading and normalisation of the fixture."""
  prefix = 'train' if split == 'train' else 't10k'
  path = os.path.join(eval_fixtures.FIXTURE, prefix + '-{}-ubyte.gz')
  with gzip.open(path.format('images-idx3'), 'rb') as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(N, -1)
  with gzip.open(path.format('labels-idx1'), 'rb') as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
  return (images / 255.0 - 0.2860) / 0.3530, labels


def test_fast_mode_from_pretraining_workdir(pretrain, data_dir, tmp_path):
  results = runner.run(_config('fast', pretrain[0], data_dir), str(tmp_path))
  on_disk, metrics = _read(str(tmp_path))
  assert on_disk['top1'] == pytest.approx(results['top1'])
  for key in ('top1', 'top5', 'num_test_examples', 'pretrained',
              'pretrained_step', 'mode', 'wall_clock_seconds'):
    assert key in on_disk
  assert on_disk['pretrained_step'] == 7
  assert on_disk['num_test_examples'] == on_disk['num_train_examples'] == N
  assert 0.0 <= on_disk['top1'] <= on_disk['top5'] <= 100.0
  assert [m['epoch'] for m in metrics if 'epoch' in m] == [1, 2, 3]
  assert metrics[-1]['final']


def test_pixel_knn_matches_numpy_and_pixels_are_learnable(data_dir,
                                                          tmp_path):
  knn = runner.run(_config('knn', 'pixels', data_dir), str(tmp_path / 'k'))
  train_x, train_y = _pixels('train')
  test_x, test_y = _pixels('test')
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sims = unit(test_x) @ unit(train_x).T
  top = np.argsort(-sims, axis=1, kind='stable')[:, :20]
  votes = np.zeros((N, 10))
  for i in range(N):
    np.add.at(votes[i], train_y[top[i]], np.exp(sims[i, top[i]] / 0.07))
  expected = 100.0 * np.mean(votes.argmax(1) == test_y)
  assert knn['top1'] == pytest.approx(expected)
  assert knn['feature_dim'] == 28 * 28 and knn['pretrained_step'] == 0
  fast = runner.run(_config('fast', 'pixels', data_dir, epochs=10),
                    str(tmp_path / 'f'))
  assert fast['top1'] >= 50.0  # 10 classes: chance is 10 %.


def test_exported_backbone_matches_workdir(pretrain, data_dir, tmp_path):
  out = export.export_backbone(pretrain[0], str(tmp_path / 'export'))
  a = runner.run(_config('knn', out, data_dir), str(tmp_path / 'a'))
  b = runner.run(_config('knn', pretrain[0], data_dir), str(tmp_path / 'b'))
  assert a['top1'] == b['top1'] and a['pretrained_step'] == 7
  # The pre-training monitor runs the same evaluator on the same features.
  config = pretrain[1]
  config.data.eval_batch_size = 16
  monitor = trainer.knn_monitor(config, data_lib.resolve(config),
                                pretrain[2], sharding.make_mesh())
  assert 100.0 * monitor == pytest.approx(b['top1'])


def test_random_backbone_baseline(data_dir, tmp_path):
  results = runner.run(_config('knn', 'random', data_dir), str(tmp_path))
  assert results['pretrained'] == 'random'
  assert results['feature_dim'] == 8  # The tiny ResNet's last stage.


def test_full_linear_mode_resumes_identically(pretrain, data_dir, tmp_path):
  workdir = str(tmp_path)
  config = _config('linear', pretrain[0], data_dir, epochs=2)
  first = runner.run(config, workdir)
  ckpts = checkpointing.checkpoint_dir(workdir)
  assert sorted(os.listdir(ckpts)) == ['1', '2']
  # Simulate a crash during epoch 2: drop its checkpoint and rerun.
  shutil.rmtree(os.path.join(ckpts, '2'))
  second = runner.run(config, workdir)
  assert second['top1'] == first['top1'] and second['top5'] == first['top5']
  assert second['steps'] == first['steps'] == 2 * N // 16
  _, metrics = _read(workdir)
  assert [m['epoch'] for m in metrics if 'epoch' in m] == [1, 2, 2]
  step_logs = [m for m in metrics if 'loss' in m and 'epoch' not in m]
  assert step_logs and all(np.isfinite(m['loss']) for m in step_logs)


def _saved_statistics(workdir):
  """The newest checkpoint's feature mean and std."""
  manager = checkpointing.make_manager(workdir, item_names=('state',))
  state = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))['state']
  manager.close()
  return np.asarray(state['mean']), np.asarray(state['std'])


def test_linear_mode_resume_keeps_the_checkpoints_statistics(
    pretrain, data_dir, tmp_path):
  """A run started standardised (before the ImageNet variants turned it
  off) and resumed with `linear.standardize=False` finishes as it began;
  a fresh unstandardised run feeds the head the raw features."""
  workdir = str(tmp_path / 'standardised')
  config = _config('linear', pretrain[0], data_dir, epochs=2)
  first = runner.run(config, workdir)
  mean, std = _saved_statistics(workdir)
  assert np.abs(mean).max() > 0 and np.abs(std - 1).max() > 0
  shutil.rmtree(os.path.join(checkpointing.checkpoint_dir(workdir), '2'))
  config.linear.standardize = False
  second = runner.run(config, workdir)
  assert second['top1'] == first['top1'] and second['top5'] == first['top5']
  np.testing.assert_array_equal(_saved_statistics(workdir)[0], mean)
  raw = str(tmp_path / 'raw')
  runner.run(config, raw)
  mean, std = _saved_statistics(raw)
  np.testing.assert_array_equal(mean, 0.0)
  np.testing.assert_array_equal(std, 1.0)
