"""The run report: its group statistics, neighbours and written files."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import eval_fixtures
from smog_jax import checkpointing
from smog_jax import jsonl
from smog_jax import models
from smog_jax import report
from smog_jax import train_state as train_state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The fixture has 64 training images; the `:tiny` config 2 heads x 8 groups
# of dimension 16.
NUM_ROWS, NUM_GROUPS, DIM = 64, 8, 16


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _planted_bank():
  """Bank 0 rows i: group 0 (i < 30), 1 (< 50), 2 (< 60), 5 (rest); bank 1
  rows: group i mod 4. Centroids: the first K basis vectors, both heads.

  Row i leans on basis vector 15 by `i / 64`, so inside a group the row
  nearest the centroid is the one with the smallest index.
  """
  basis = np.eye(DIM, dtype=np.float32)
  groups0 = np.select([np.arange(NUM_ROWS) < t for t in (30, 50, 60)],
                      [0, 1, 2], 5)
  groups1 = np.arange(NUM_ROWS) % 4
  lean = (np.arange(NUM_ROWS) / NUM_ROWS)[:, None] * basis[15]
  bank = np.stack([_unit(basis[groups0] + lean), _unit(basis[groups1] + lean)])
  centroids = np.stack([basis[:NUM_GROUPS]] * 2)
  return bank.astype(np.float32), centroids, groups0, groups1


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp('report')
  config = eval_fixtures.use_fixture(
      eval_fixtures.load_config('fashion_mnist', 'tiny'), str(root / 'tfds'))
  assert (config.smog.num_groups, config.model.projection_dim) == (
      NUM_GROUPS, DIM)
  state = train_state_lib.create_train_state(
      jax.random.key(0), models.build_network(config.model), optax.sgd(0.1),
      (28, 28, 1), num_heads=2, num_groups=NUM_GROUPS,
      memory_bank_rows=NUM_ROWS)
  bank, centroids, _, _ = _planted_bank()
  state = state.replace(step=np.asarray(40, np.int32), memory_bank=bank,
                        centroids=centroids)
  path = str(root / 'run')
  with checkpointing.make_manager(path, async_save=False) as manager:
    checkpointing.save(manager, state, config, force=True)
    manager.wait_until_finished()
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    for step in (20, 40):
      f.write(json.dumps(dict(step=step, epoch=step / 4, loss=2.0 - step / 40,
                              groups_used=4.0, images_per_sec=10.0)) + '\n')
    f.write(json.dumps(dict(step=40, knn_top1=0.5)) + '\n')
  return path


def test_sample_groups_spans_largest_to_smallest_nonempty():
  sizes = np.array([0, 5, 3, 9, 1, 0, 3])
  # Non-empty by size, ties by index: 3 (9), 1 (5), 2 (3), 6 (3), 4 (1).
  assert report.sample_groups(sizes, 3) == [
      ('largest', 3), ('median', 2), ('smallest', 4)]
  assert report.sample_groups(sizes, 9) == [
      ('largest', 3), ('size rank 2 of 5', 1), ('median', 2),
      ('size rank 4 of 5', 6), ('smallest', 4)]
  # Eight groups: the lower median (rank 4) replaces the pick nearest it.
  assert report.sample_groups(np.arange(8, 0, -1), 3) == [
      ('largest', 0), ('median', 3), ('smallest', 7)]
  assert report.sample_groups(np.zeros(4, int), 3) == []


def test_nearest_neighbours_excludes_the_query():
  x = _unit(np.array([[1, 0], [0.9, 0.1], [0.6, 0.4], [0, 1]], np.float32))
  np.testing.assert_array_equal(
      report.nearest_neighbours(x, np.array([0, 3]), 2), [[1, 2], [2, 1]])


def test_assignments_follow_each_heads_bank():
  bank, centroids, groups0, groups1 = _planted_bank()
  assignments = report.assign_bank(bank, centroids)
  np.testing.assert_array_equal(assignments, [groups0, groups1])
  np.testing.assert_array_equal(
      report.group_sizes(assignments, NUM_GROUPS),
      [[30, 20, 10, 0, 0, 4, 0, 0], [16, 16, 16, 16, 0, 0, 0, 0]])
  np.testing.assert_array_equal(
      report.nearest_to_centroid(bank[0], assignments[0], centroids[0, 1], 1,
                                 3), [30, 31, 32])


def test_report_from_a_checkpoint(workdir):
  run = report.load_run(workdir)
  assert run.step == 40
  np.testing.assert_array_equal(run.memory_bank, _planted_bank()[0])
  index = report.write_report(workdir, images_per_group=4, num_queries=3,
                              num_neighbours=4)
  assert index == os.path.join(workdir, 'report', 'index.html')
  with open(index) as f:
    page = f.read()
  for name in ('curves.png', 'group_sizes.png', 'groups.png',
               'neighbours.png'):
    assert f'src="{name}"' in page
    with open(os.path.join(workdir, 'report', name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert 'step 40' in page
  assert '2 heads x 8 groups' in page


def test_curves_draw_the_logged_metrics(workdir, tmp_path):
  names = report.plot_curves(report.read_metrics(workdir), NUM_GROUPS,
                             str(tmp_path / 'c.png'))
  # Known metrics first, in their fixed order; step and epoch are axes.
  assert names == ['loss', 'groups_used', 'knn_top1', 'images_per_sec']


def test_out_of_range_head_is_refused(workdir):
  with pytest.raises(ValueError, match='--head=2 is out of range'):
    report.write_report(workdir, head=2)


def test_workdir_without_checkpoint_is_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match='No pre-training checkpoints'):
    report.write_report(str(tmp_path))


def test_command_line(workdir, tmp_path):
  terminal = subprocess.run(
      [sys.executable, '-m', 'smog_jax.report', f'--workdir={workdir}',
       f'--output={tmp_path}', '--head=1', '--images_per_group=4'],
      check=True, capture_output=True, text=True).stderr
  assert f"(step 40): {tmp_path / 'index.html'}" in terminal
  assert sorted(os.listdir(tmp_path)) == [
      'curves.png', 'group_sizes.png', 'groups.png', 'index.html',
      'neighbours.png']


def test_metrics_are_read_from_a_non_local_workdir():
  # TensorFlow's in-memory filesystem stands in for gs://.
  workdir = 'ram://bucket/report_run'
  writer = jsonl.JsonlWriter(f'{workdir}/{jsonl.METRICS_FILE}')
  for step in (1, 2):
    writer.write({'step': step, 'loss': 1.0 / step})
  assert report.read_metrics(workdir) == [{'step': 1, 'loss': 1.0},
                                          {'step': 2, 'loss': 0.5}]
  assert report.read_metrics('ram://bucket/no_run') == []
