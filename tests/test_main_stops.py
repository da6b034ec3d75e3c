"""End-to-end runs of `python -m smog_jax.main` that stop: a NaN, a lost or
hung process, an unreadable checkpoint, a changed config (the runs:
tests/main_runs.py).

The first two need no reference run until their end, so a worker that
starts with this file trains while another makes the reference run.
"""

import json
import os
import signal

import jax
import main_runs as runs
import numpy as np


def test_non_finite_step_stops_and_keeps_the_last_good_checkpoint(shared):
  workdir = shared['root'] / 'nan'
  # The learning rate jumps to 1e38 after step 1: step 2's update overflows.
  log = runs.run_failing(shared, workdir,
                         ('--config.optimizer.peak_lr=1e38',
                          '--config.checkpoint_every_steps=1'))
  assert 'Step 2 produced a non-finite' in log
  assert 'step 1, is kept' in log
  assert runs.checkpoint_steps(workdir) == [1]
  _, state = runs.final_state(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
  with open(os.path.join(str(workdir), 'metrics.jsonl')) as f:
    assert [json.loads(line)['step'] for line in f] == [1]


def test_hung_then_dead_process_stops_the_other_then_both_resume(
    shared, request):
  # Two processes of one device each; the reference run has 8 devices, so
  # the final states agree to the tolerance of a change of device count.
  # Process 1 hangs (SIGSTOP: alive, sockets open, so no collective fails;
  # only the peer watch can end process 0), then after a restart dies
  # (SIGKILL); each time process 0 ends with the sentence. Restarted once
  # more, the run ends in the single-process run's state.
  workdir = shared['root'] / 'lost_process'
  for times, (stop, checkpoint) in enumerate(
      ((signal.SIGSTOP, 2), (signal.SIGKILL, 4)), start=1):
    procs = runs.start_two_processes(shared, workdir,
                                     ('--heartbeat_timeout_seconds=20',))
    try:
      runs.wait_for_checkpoint(procs[0], workdir, checkpoint)
      procs[1].send_signal(stop)
      runs.assert_stopped_as_lost_peer(procs[0], workdir, times)
      if stop == signal.SIGSTOP:
        assert 'process 1 gave no sign of life for' in runs.read_log(workdir)
    finally:
      procs[1].kill()
      procs[1].wait()
    assert runs.checkpoint_steps(workdir)[-1] < runs.TOTAL_STEPS
  for p in runs.start_two_processes(shared, workdir):
    assert p.wait(timeout=runs.TIMEOUT) == 0, runs.log_tail(workdir)
  _, want = runs.final_state(request.getfixturevalue('uninterrupted'))
  _, got = runs.final_state(workdir)
  runs.assert_same_state(got, want, rtol=2e-4, atol=2e-5)


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(
    shared, uninterrupted):
  workdir = runs.copy_run(shared, uninterrupted, 'corrupted')
  state_dir = os.path.join(str(workdir), 'checkpoints', '8', 'state')
  for root, _, files in os.walk(state_dir):
    for name in files:  # Truncate every file of the state to half its size.
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)
  runs.run_to_end(shared, workdir)
  log = runs.read_log(workdir)
  assert 'Checkpoint 8 in' in log and 'Resumed from step 6' in log
  assert os.path.isdir(os.path.join(str(workdir), 'checkpoints',
                                    '8.unreadable'))  # Set aside, kept.
  _, want = runs.final_state(uninterrupted)
  _, got = runs.final_state(workdir)  # Steps 7 and 8 again, from step 6.
  runs.assert_same_state(got, want, rtol=1e-6, atol=1e-7)


def test_resume_with_another_config_is_refused_naming_the_fields(
    shared, uninterrupted):
  # Which fields may change, and the two sentences, are tested on every
  # recipe in tests/test_configs.py; here: the binary stops before writing
  # anything, and then resumes with allow_config_change.
  workdir = runs.copy_run(shared, uninterrupted, 'other_config')
  log = runs.run_failing(shared, workdir, ('--config.smog.num_groups=6',
                                           '--config.batch_size=8',
                                           '--config.total_steps=10'))
  for change in ('batch_size: 16 -> 8', 'smog.num_groups: 8 -> 6',
                 'total_steps: 8 -> 10'):
    assert change in log
  assert 'new --workdir' in log
  assert runs.checkpoint_steps(workdir) == [4, 6, 8]  # Nothing written.
  runs.run_to_end(shared, workdir, extra=('--config.total_steps=10',
                                          '--config.allow_config_change=True'))
  assert runs.checkpoint_steps(workdir)[-1] == 10
  # Resumed at an epoch boundary (step 8): regrouped there first.
  assert 'Regrouping 2 before step 8.' in runs.read_log(workdir)
