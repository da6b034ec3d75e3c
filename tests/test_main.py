"""End-to-end runs of `python -m smog_jax.main`: metrics, checkpoints,
resume after SIGKILL and SIGTERM, across device counts, regrouping cadence
(the runs: tests/main_runs.py)."""

import json
import os
import re
import signal

import main_runs as runs
import numpy as np
import pytest


def test_tiny_run_writes_metrics_and_checkpoints(shared, uninterrupted):
  with open(os.path.join(str(uninterrupted), 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  # One record per logged step (log_every_steps=1), each with the contract.
  assert [r['step'] for r in records] == list(range(1, runs.TOTAL_STEPS + 1))
  required = {'step', 'loss', 'learning_rate', 'ema_momentum',
              'group_momentum', 'groups_used', 'assignment_entropy',
              'images_per_sec'}
  for r in records:
    assert required <= set(r), required - set(r)
    assert np.isfinite(r['loss'])
    assert 1 <= r['groups_used'] <= 8
  # The kNN monitor ran once, at the end, on the 64 test images.
  knn = [r for r in records if 'knn_top1' in r]
  assert [r['step'] for r in knn] == [runs.TOTAL_STEPS]
  assert 0.0 <= knn[0]['knn_top1'] <= 1.0
  # The logged schedules are the pure functions of the step.
  first, last = records[0], records[-1]
  assert first['group_momentum'] == pytest.approx(1.0)
  assert last['group_momentum'] == pytest.approx(0.99, abs=1e-6)
  assert last['ema_momentum'] == pytest.approx(0.99)
  # k-means regrouping (and the target reset) exactly at the epoch starts:
  # 4 steps an epoch.
  log = runs.read_log(uninterrupted)
  assert re.findall(r'Regrouping (\d+) before step (\d+)', log) == [
      ('0', '0'), ('1', '4')]
  # keep_checkpoints=3 of the checkpoints every 2 steps.
  assert runs.checkpoint_steps(uninterrupted) == [4, 6, 8]
  step, state = runs.final_state(uninterrupted)
  assert step == runs.TOTAL_STEPS == int(state['step'])
  np.testing.assert_allclose(
      np.linalg.norm(state['centroids'], axis=-1), 1.0, rtol=1e-5)
  # The bank holds a unit-norm projection for every one of the 64 examples;
  # the rows that pad it for sharding stay zero.
  bank = state['memory_bank']
  np.testing.assert_allclose(np.linalg.norm(bank[:, :64], axis=-1), 1.0,
                             rtol=1e-5)
  assert bank.shape[1] % 8 == 0 and np.all(bank[:, 64:] == 0)


def test_the_terminal_shows_the_run_and_the_log_file_holds_the_rest(
    uninterrupted):
  terminal = runs.read_log(uninterrupted)
  # Every line is a time-stamped entry or one of its indented rows.
  for line in terminal.splitlines():
    assert re.match(r'\d\d:\d\d:\d\d  \S| {12}\S', line), line
  entries = re.findall(r'^\d\d:\d\d:\d\d  (.*)$', terminal, re.M)
  checkpoint = 'Checkpoint of step {} to uninterrupted/checkpoints\\.'
  progress = (r'step {0}/8 \({1} %\), epoch {2}\.0: loss \d\.\d{{4}}, '
              r'[\d,]+ images/s, ETA (\?|\d+ s)')
  expected = [
      r'smog_jax\.main: \S+/configs/fashion_mnist\.py:tiny '
      r'--config\.total_steps=8 .*',
      r'Memory bank filled: 64 examples\.',
      r'Regrouping 0 before step 0\.',
      checkpoint.format(2),
      progress.format(4, 50, 1),
      checkpoint.format(4),
      r'Regrouping 1 before step 4\.',
      checkpoint.format(6),
      progress.format(8, 100, 2),
      r'kNN top-1 \d+\.\d\d % at step 8\.',
      checkpoint.format(8),
      r'Done: step 8 \(8 steps in \d+ s\); loss \d\.\d{4}, kNN top-1 '
      r'\d+\.\d\d %\.',
  ]
  assert len(entries) == len(expected), entries
  for entry, pattern in zip(entries, expected):
    assert re.fullmatch(pattern, entry), (entry, pattern)
  rows = re.findall(r'^ {12}(\S+(?: \S+)?) {2,}', terminal, re.M)
  assert rows == ['devices', 'data', 'model', 'plan', 'kNN', 'workdir',
                  'full log', 'metrics', 'report']
  # Orbax's, JAX's and TensorFlow's INFO lines went to the full log only,
  # with every entry of the terminal.
  with open(os.path.join(uninterrupted, 'logs', 'main.INFO'),
            encoding='utf-8') as f:
    log = f.read()
  for chatter in ('CheckpointManager', 'absl::InitializeLog',
                  'Constructing tf.data.Dataset fashion_mnist'):
    assert chatter in log
  for chatter in ('orbax', 'backend', 'oneDNN', 'absl::InitializeLog'):
    assert chatter not in terminal
  assert all(entry in log for entry in entries)


def test_kill_9_and_resume_ends_in_the_same_state(shared, uninterrupted):
  workdir = shared['root'] / 'killed'
  proc = runs.start(shared, workdir)
  runs.wait_for_checkpoint(proc, workdir, 4)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert runs.checkpoint_steps(workdir)[-1] < runs.TOTAL_STEPS
  runs.run_to_end(shared, workdir)
  _, want = runs.final_state(uninterrupted)
  _, got = runs.final_state(workdir)
  runs.assert_same_state(got, want, rtol=1e-6, atol=1e-7)
  # Steps logged after the last checkpoint were dropped, then logged again:
  # each step appears once, with the uninterrupted run's loss.
  def losses(w):
    with open(os.path.join(str(w), 'metrics.jsonl')) as f:
      return [(r['step'], r['loss']) for r in map(json.loads, f)]
  got_losses, want_losses = losses(workdir), losses(uninterrupted)
  assert [s for s, _ in got_losses] == list(range(1, runs.TOTAL_STEPS + 1))
  np.testing.assert_allclose([l for _, l in got_losses],
                             [l for _, l in want_losses], rtol=1e-6)


def test_sigterm_saves_then_resumes_on_one_device(shared, uninterrupted):
  # Preempted on 8 devices; the checkpoint restores on 1 device; the 1-device
  # steps continue to the same final state as the 8-device run.
  workdir = shared['root'] / 'preempted'
  proc = runs.start(shared, workdir)
  runs.wait_for_checkpoint(proc, workdir, 2)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=runs.TIMEOUT) == 0
  steps = runs.checkpoint_steps(workdir)
  with open(os.path.join(str(workdir), 'metrics.jsonl')) as f:
    last_logged = [json.loads(line)['step'] for line in f][-1]
  assert steps[-1] == last_logged  # saved at the step it stopped
  assert steps[-1] < runs.TOTAL_STEPS, 'the run ended before SIGTERM arrived'
  runs.run_to_end(shared, workdir, devices=1)
  _, want = runs.final_state(uninterrupted)
  _, got = runs.final_state(workdir)
  runs.assert_same_state(got, want, rtol=2e-4, atol=2e-5)


def test_one_device_checkpoint_resumes_on_eight(shared, uninterrupted):
  workdir = shared['root'] / 'one_then_eight'
  proc = runs.start(shared, workdir, devices=1)
  runs.wait_for_checkpoint(proc, workdir, 4)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert runs.checkpoint_steps(workdir)[-1] < runs.TOTAL_STEPS
  runs.run_to_end(shared, workdir, devices=8)
  _, want = runs.final_state(uninterrupted)
  _, got = runs.final_state(workdir)
  runs.assert_same_state(got, want, rtol=2e-4, atol=2e-5)


def test_regroups_per_epoch_regroups_every_that_many_steps(shared):
  # 4 steps an epoch, twice an epoch: before steps 0, 2, 4 and 6, each a new
  # regrouping (bank and k-means key); the option survives a resume.
  workdir = shared['root'] / 'regroup2'
  extra = ('--config.smog.regroups_per_epoch=2',)
  runs.run_to_end(shared, workdir, extra=extra + ('--config.total_steps=3',))
  runs.run_to_end(shared, workdir, extra=extra + (
      '--config.total_steps=8', '--config.allow_config_change=True'))
  log = runs.read_log(workdir)
  assert re.findall(r'Regrouping (\d+) before step (\d+)', log) == [
      ('0', '0'), ('1', '2'), ('2', '4'), ('3', '6')]
