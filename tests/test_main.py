"""End-to-end runs of `python -m smog_jax.main` on the `:tiny` config.

Each run is a real subprocess on the committed 64-image Fashion-MNIST fixture:
2 epochs of 4 steps (so regrouping and the target reset happen mid-run),
checkpoints every 2 steps. A shared persistent compilation cache keeps the
repeated runs from recompiling.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from smog_jax import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, 'tests', 'data', 'fashion_mnist')
TOTAL_STEPS = 8
TIMEOUT = 600


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  root = tmp_path_factory.mktemp('main')
  return {'data_dir': str(root / 'tfds'), 'cache': str(root / 'xla_cache'),
          'root': root}


def _command(shared, workdir, extra=()):
  # The workdir is passed relative to the run's cwd (the shared root), as
  # users type it: checkpointing must not depend on absolute paths.
  return [sys.executable, '-m', 'smog_jax.main',
          '--config', os.path.join(REPO, 'configs', 'fashion_mnist.py:tiny'),
          '--workdir', os.path.relpath(str(workdir), str(shared['root'])),
          f'--config.total_steps={TOTAL_STEPS}',
          '--config.checkpoint_every_steps=2',
          f'--config.data.data_dir={shared["data_dir"]}',
          f'--config.data.fashion_mnist_idx_dir={FIXTURE}',
          '--config.data.download=False', *extra]


def _env(shared, devices):
  env = dict(os.environ)
  env.update(
      XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
      JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
      JAX_COMPILATION_CACHE_DIR=shared['cache'],
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return env


def _start(shared, workdir, devices=8, extra=()):
  log = open(os.path.join(str(shared['root']),
                          f'{os.path.basename(str(workdir))}.log'), 'ab')
  return subprocess.Popen(_command(shared, workdir, extra),
                          cwd=str(shared['root']),
                          env=_env(shared, devices), stdout=log,
                          stderr=subprocess.STDOUT)


def _run(shared, workdir, devices=8, extra=()):
  proc = _start(shared, workdir, devices, extra)
  assert proc.wait(timeout=TIMEOUT) == 0, _tail(shared, workdir)
  return workdir


def _log(shared, workdir):
  path = os.path.join(str(shared['root']),
                      f'{os.path.basename(str(workdir))}.log')
  with open(path, 'rb') as f:
    return f.read().decode(errors='replace')


def _tail(shared, workdir):
  return _log(shared, workdir)[-3000:]


def _checkpoint_steps(workdir):
  directory = os.path.join(str(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _final_state(workdir):
  _, state, step = checkpointing.load_host_state(str(workdir))
  return step, state


def _assert_same_state(a, b, rtol, atol):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def _wait_for_checkpoint(proc, workdir, step):
  deadline = time.time() + TIMEOUT
  while time.time() < deadline:
    if step in _checkpoint_steps(workdir):
      return
    assert proc.poll() is None, 'run ended before its checkpoint'
    time.sleep(0.2)
  raise TimeoutError(f'no checkpoint {step} in {workdir}')


@pytest.fixture(scope='module')
def uninterrupted(shared):
  # With the kNN monitor at the end (it reads the state, never changes it).
  return _run(shared, shared['root'] / 'uninterrupted',
              extra=('--config.knn_every_epochs=0',))


def test_tiny_run_writes_metrics_and_checkpoints(shared, uninterrupted):
  with open(os.path.join(str(uninterrupted), 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  # One record per logged step (log_every_steps=1), each with the contract.
  assert [r['step'] for r in records] == list(range(1, TOTAL_STEPS + 1))
  required = {'step', 'loss', 'learning_rate', 'ema_momentum',
              'group_momentum', 'groups_used', 'assignment_entropy',
              'images_per_sec'}
  for r in records:
    assert required <= set(r), required - set(r)
    assert np.isfinite(r['loss'])
    assert 1 <= r['groups_used'] <= 8
  # The kNN monitor ran once, at the end, on the 64 test images.
  knn = [r for r in records if 'knn_top1' in r]
  assert [r['step'] for r in knn] == [TOTAL_STEPS]
  assert 0.0 <= knn[0]['knn_top1'] <= 1.0
  # The logged schedules are the pure functions of the step.
  first, last = records[0], records[-1]
  assert first['group_momentum'] == pytest.approx(1.0)
  assert last['group_momentum'] == pytest.approx(0.99, abs=1e-6)
  assert last['ema_momentum'] == pytest.approx(0.99)
  # k-means regrouping (and the target reset) exactly at the epoch starts:
  # 4 steps an epoch.
  assert re.findall(r'Regrouping (\d+) before step (\d+)',
                    _log(shared, uninterrupted)) == [('0', '0'), ('1', '4')]
  # keep_checkpoints=3 of the checkpoints every 2 steps.
  assert _checkpoint_steps(uninterrupted) == [4, 6, 8]
  step, state = _final_state(uninterrupted)
  assert step == TOTAL_STEPS == int(state['step'])
  np.testing.assert_allclose(
      np.linalg.norm(state['centroids'], axis=-1), 1.0, rtol=1e-5)
  # The bank holds a unit-norm projection for every one of the 64 examples;
  # the rows that pad it for sharding stay zero.
  bank = state['memory_bank']
  np.testing.assert_allclose(np.linalg.norm(bank[:, :64], axis=-1), 1.0,
                             rtol=1e-5)
  assert bank.shape[1] % 8 == 0 and np.all(bank[:, 64:] == 0)


def test_kill_9_and_resume_ends_in_the_same_state(shared, uninterrupted):
  workdir = shared['root'] / 'killed'
  proc = _start(shared, workdir)
  _wait_for_checkpoint(proc, workdir, 4)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert _checkpoint_steps(workdir)[-1] < TOTAL_STEPS
  _run(shared, workdir)
  _, want = _final_state(uninterrupted)
  _, got = _final_state(workdir)
  _assert_same_state(got, want, rtol=1e-6, atol=1e-7)
  # Steps logged after the last checkpoint were dropped, then logged again:
  # each step appears once, with the uninterrupted run's loss.
  def losses(w):
    with open(os.path.join(str(w), 'metrics.jsonl')) as f:
      return [(r['step'], r['loss']) for r in map(json.loads, f)]
  got_losses, want_losses = losses(workdir), losses(uninterrupted)
  assert [s for s, _ in got_losses] == list(range(1, TOTAL_STEPS + 1))
  np.testing.assert_allclose([l for _, l in got_losses],
                             [l for _, l in want_losses], rtol=1e-6)


def test_sigterm_saves_then_resumes_on_one_device(shared, uninterrupted):
  # Preempted on 8 devices; the checkpoint restores on 1 device; the 1-device
  # steps continue to the same final state as the 8-device run.
  workdir = shared['root'] / 'preempted'
  proc = _start(shared, workdir)
  _wait_for_checkpoint(proc, workdir, 2)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=TIMEOUT) == 0
  steps = _checkpoint_steps(workdir)
  with open(os.path.join(str(workdir), 'metrics.jsonl')) as f:
    last_logged = [json.loads(line)['step'] for line in f][-1]
  assert steps[-1] == last_logged  # saved at the step it stopped
  assert steps[-1] < TOTAL_STEPS, 'the run ended before SIGTERM arrived'
  _run(shared, workdir, devices=1)
  _, want = _final_state(uninterrupted)
  _, got = _final_state(workdir)
  _assert_same_state(got, want, rtol=2e-4, atol=2e-5)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_two_processes(shared, workdir, extra=()):
  """Two processes of 4 devices each, one run: the 8 devices of the others."""
  address = f'127.0.0.1:{_free_port()}'
  return [_start(shared, workdir, devices=4, extra=(
      f'--coordinator_address={address}', '--num_processes=2',
      f'--process_id={i}', *extra)) for i in range(2)]


def test_two_processes_equal_one_process(shared, uninterrupted):
  workdir = shared['root'] / 'two_processes'
  for p in _start_two_processes(shared, workdir):
    assert p.wait(timeout=TIMEOUT) == 0, _tail(shared, workdir)
  _, want = _final_state(uninterrupted)
  _, got = _final_state(workdir)
  _assert_same_state(got, want, rtol=2e-4, atol=2e-5)


def test_one_device_checkpoint_resumes_on_eight(shared, uninterrupted):
  workdir = shared['root'] / 'one_then_eight'
  proc = _start(shared, workdir, devices=1)
  _wait_for_checkpoint(proc, workdir, 4)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert _checkpoint_steps(workdir)[-1] < TOTAL_STEPS
  _run(shared, workdir, devices=8)
  _, want = _final_state(uninterrupted)
  _, got = _final_state(workdir)
  _assert_same_state(got, want, rtol=2e-4, atol=2e-5)


def _copy(shared, uninterrupted, name):
  workdir = shared['root'] / name
  shutil.copytree(str(uninterrupted), str(workdir))
  return workdir


def _fails(shared, workdir, extra):
  proc = _start(shared, workdir, extra=extra)
  assert proc.wait(timeout=TIMEOUT) == 1, _tail(shared, workdir)
  log = _log(shared, workdir)
  assert 'Traceback' not in log
  return log


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(
    shared, uninterrupted):
  workdir = _copy(shared, uninterrupted, 'corrupted')
  state_dir = os.path.join(str(workdir), 'checkpoints', '8', 'state')
  for root, _, files in os.walk(state_dir):
    for name in files:  # Truncate every file of the state to half its size.
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)
  _run(shared, workdir)
  log = _log(shared, workdir)
  assert 'Checkpoint 8 in' in log and 'Resumed from step 6' in log
  assert os.path.isdir(os.path.join(str(workdir), 'checkpoints',
                                    '8.unreadable'))  # Set aside, kept.
  _, want = _final_state(uninterrupted)
  _, got = _final_state(workdir)  # Steps 7 and 8 again, from step 6.
  _assert_same_state(got, want, rtol=1e-6, atol=1e-7)


def test_resume_with_another_config_is_refused_naming_the_fields(
    shared, uninterrupted):
  workdir = _copy(shared, uninterrupted, 'other_config')
  log = _fails(shared, workdir, ('--config.smog.num_groups=6',
                                 '--config.batch_size=8'))
  assert 'batch_size: 16 -> 8' in log and 'smog.num_groups: 8 -> 6' in log
  assert 'new --workdir' in log
  log = _fails(shared, workdir, ('--config.total_steps=10',))
  assert 'total_steps: 8 -> 10' in log and 'allow_config_change' in log
  assert _checkpoint_steps(workdir) == [4, 6, 8]  # Nothing written.
  _run(shared, workdir, extra=('--config.total_steps=10',
                               '--config.allow_config_change=True'))
  assert _checkpoint_steps(workdir)[-1] == 10
  # Resumed at an epoch boundary (step 8): regrouped there first.
  assert 'Regrouping 2 before step 8.' in _log(shared, workdir)


def test_regroups_per_epoch_regroups_every_that_many_steps(shared):
  # 4 steps an epoch, twice an epoch: before steps 0, 2, 4 and 6, each a new
  # regrouping (bank and k-means key); the option survives a resume.
  workdir = shared['root'] / 'regroup2'
  extra = ('--config.smog.regroups_per_epoch=2',)
  _run(shared, workdir, extra=extra + ('--config.total_steps=3',))
  _run(shared, workdir, extra=extra + ('--config.total_steps=8',
                                       '--config.allow_config_change=True'))
  assert re.findall(r'Regrouping (\d+) before step (\d+)',
                    _log(shared, workdir)) == [
                        ('0', '0'), ('1', '2'), ('2', '4'), ('3', '6')]


def test_non_finite_step_stops_and_keeps_the_last_good_checkpoint(shared):
  workdir = shared['root'] / 'nan'
  # The learning rate jumps to 1e38 after step 1: step 2's update overflows.
  log = _fails(shared, workdir, ('--config.optimizer.peak_lr=1e38',
                                 '--config.checkpoint_every_steps=1'))
  assert 'Step 2 produced a non-finite' in log
  assert 'step 1, is kept' in log
  assert _checkpoint_steps(workdir) == [1]
  _, state = _final_state(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
  with open(os.path.join(str(workdir), 'metrics.jsonl')) as f:
    assert [json.loads(line)['step'] for line in f] == [1]


# JAX's runtime ends a survivor that waits at a coordination-service barrier
# (e.g. orbax's checkpoint sync) when the lost peer misses its heartbeats:
# a fatal log naming the cause, then SIGABRT. Python cannot replace that
# reaction (the client's callback takes an absl::Status no binding converts).
_RUNTIME_VERDICT = 'This most likely indicates that another task died'


def _assert_stopped_as_lost_peer(proc, shared, workdir):
  """The survivor stops in bounded time, saying why, by one of two ways."""
  returncode = proc.wait(timeout=120)  # No hang.
  log = _log(shared, workdir)
  if returncode == 1:  # A collective failed: smog_jax.main's sentence.
    assert 'lost contact with another process' in log
  else:
    assert returncode == -signal.SIGABRT, _tail(shared, workdir)
    assert _RUNTIME_VERDICT in log


def test_lost_process_stops_the_other_then_both_resume(shared, uninterrupted):
  workdir = shared['root'] / 'lost_process'
  procs = _start_two_processes(shared, workdir,
                               ('--heartbeat_timeout_seconds=10',))
  _wait_for_checkpoint(procs[0], workdir, 2)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  _assert_stopped_as_lost_peer(procs[0], shared, workdir)
  assert time.time() - killed_at < 120
  assert _checkpoint_steps(workdir)[-1] < TOTAL_STEPS
  for p in _start_two_processes(shared, workdir):
    assert p.wait(timeout=TIMEOUT) == 0, _tail(shared, workdir)
  _, want = _final_state(uninterrupted)
  _, got = _final_state(workdir)
  _assert_same_state(got, want, rtol=2e-4, atol=2e-5)


def test_hung_process_is_stopped_by_the_heartbeat_verdict(shared):
  # A stopped (not dead) process keeps its sockets open, so no collective
  # fails: only the missed heartbeats can end the survivor.
  workdir = shared['root'] / 'hung_process'
  procs = _start_two_processes(shared, workdir,
                               ('--heartbeat_timeout_seconds=10',))
  try:
    _wait_for_checkpoint(procs[0], workdir, 2)
    procs[1].send_signal(signal.SIGSTOP)
    stopped_at = time.time()
    assert procs[0].wait(timeout=120) == -signal.SIGABRT
    assert time.time() - stopped_at < 60
    assert _RUNTIME_VERDICT in _log(shared, workdir)
  finally:
    procs[1].kill()
    procs[1].wait()
