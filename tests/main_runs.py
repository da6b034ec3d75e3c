"""Runs of `python -m smog_jax.main` on the `:tiny` config, for the tests.

Each run is a real subprocess on the committed 64-image Fashion-MNIST fixture:
2 epochs of 4 steps (so regrouping and the target reset happen mid-run),
checkpoints every 2 steps. The session's persistent compilation cache
(conftest) keeps the repeated runs from recompiling. The `shared` and
`uninterrupted` fixtures (conftest) give the runs' folder and the reference
run.
"""

import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from smog_jax import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, 'tests', 'data', 'fashion_mnist')
TOTAL_STEPS = 8
TIMEOUT = 600
# What the survivor of a lost process says (smog_jax.distributed).
LOST_SENTENCE = ('smog_jax.main: process 0 lost contact with another process '
                 'of the run (')
RESTART = 'restart every process with the same command'


def command_line(shared, workdir, extra=()):
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


def environment(devices):
  """The session's environment (its XLA flags and compilation cache) with
  `devices` fake devices, running this checkout's code (not an installed
  copy)."""
  return dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
              PYTHONPATH=REPO, XLA_FLAGS=(
                  f'{os.environ.get("XLA_FLAGS", "")} '
                  f'--xla_force_host_platform_device_count={devices}'))


def log_path(workdir):
  """A run's output, beside its workdir."""
  return f'{workdir}.log'


def start(shared, workdir, devices=8, extra=()):
  log = open(log_path(workdir), 'ab')
  return subprocess.Popen(command_line(shared, workdir, extra),
                          cwd=str(shared['root']),
                          env=environment(devices), stdout=log,
                          stderr=subprocess.STDOUT)


def run_to_end(shared, workdir, devices=8, extra=()):
  proc = start(shared, workdir, devices, extra)
  assert proc.wait(timeout=TIMEOUT) == 0, log_tail(workdir)
  return workdir


def read_log(workdir):
  with open(log_path(workdir), 'rb') as f:
    return f.read().decode(errors='replace')


def log_tail(workdir):
  return read_log(workdir)[-3000:]


def checkpoint_steps(workdir):
  directory = os.path.join(str(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def final_state(workdir):
  _, state, step = checkpointing.load_host_state(str(workdir))
  return step, state


def assert_same_state(a, b, rtol, atol):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def wait_for_checkpoint(proc, workdir, step):
  deadline = time.time() + TIMEOUT
  while time.time() < deadline:
    if step in checkpoint_steps(workdir):
      return
    assert proc.poll() is None, 'run ended before its checkpoint'
    time.sleep(0.2)
  raise TimeoutError(f'no checkpoint {step} in {workdir}')


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_two_processes(shared, workdir, extra=()):
  """Two processes of one device each, one run (a 2-device mesh)."""
  address = f'127.0.0.1:{free_port()}'
  return [start(shared, workdir, devices=1, extra=(
      f'--coordinator_address={address}', '--num_processes=2',
      f'--process_id={i}', *extra)) for i in range(2)]


def copy_run(shared, uninterrupted, name):
  workdir = shared['root'] / name
  shutil.copytree(str(uninterrupted), str(workdir))
  return workdir


def run_failing(shared, workdir, extra):
  proc = start(shared, workdir, extra=extra)
  assert proc.wait(timeout=TIMEOUT) == 1, log_tail(workdir)
  log = read_log(workdir)
  assert 'Traceback' not in log
  return log


def assert_stopped_as_lost_peer(proc, workdir, times):
  """The survivor ends with status 1 and the sentence (the `times`-th in
  the workdir's log), not with JAX's abort."""
  assert proc.wait(timeout=120) == 1, log_tail(workdir)  # No hang.
  log = read_log(workdir)
  assert log.count(LOST_SENTENCE) == times, log[-3000:]
  assert log.count(RESTART) == times
  assert 'Terminating process because' not in log
