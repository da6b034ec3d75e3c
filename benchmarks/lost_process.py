"""Lost-process soak: how the survivor of a two-process run ends, N times.

Starts `smog_jax.main` as two processes of 4 fake CPU devices each (the
`:tiny` config on the committed Fashion-MNIST fixture, checkpoints every 2
steps, `--heartbeat_timeout_seconds=10`), waits for the checkpoint of step
2, then does one of:
  * kill:  SIGKILL process 1 (the survivor, process 0, hosts JAX's
    coordination service);
  * hang:  SIGSTOP process 1 (alive, sockets open, silent);
  * kill0: SIGKILL process 0, the coordinator (survivor: process 1).
For each repetition it prints the survivor's exit status, the seconds from
the signal to its exit, and whether its log holds smog_jax's sentence
(`lost contact with another process of the run`) or JAX's abort
(`Terminating process because ...`). docs/reliability.md records a run.

  python3 benchmarks/lost_process.py --repeats 20 --cases kill hang kill0
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import tempfile
import time

from fault_injection import command_line, environment

_SENTENCE = 'lost contact with another process of the run'
_ABORT = 'Terminating process because'


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _wait_for_checkpoint(workdir: str, step: int, procs, limit=600.0):
  deadline = time.time() + limit
  directory = os.path.join(workdir, 'checkpoints')
  while time.time() < deadline:
    if os.path.isdir(os.path.join(directory, str(step))):
      return
    if any(p.poll() is not None for p in procs):
      raise RuntimeError(f'a process ended before checkpoint {step}')
    time.sleep(0.1)
  raise TimeoutError(f'no checkpoint {step} in {workdir}')


def _once(root: str, case: str, repeat: int, data_dir: str, env) -> tuple:
  """(survivor's status, seconds to its exit, sentence seen, abort seen)."""
  workdir = os.path.join(root, f'{case}{repeat}')
  address = f'127.0.0.1:{_free_port()}'
  logs = [open(f'{workdir}.p{i}.log', 'wb') for i in range(2)]
  procs = [subprocess.Popen(
      command_line(workdir, data_dir, 8) + [
          f'--coordinator_address={address}', '--num_processes=2',
          f'--process_id={i}', '--heartbeat_timeout_seconds=10'],
      env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
  victim, survivor = (0, 1) if case == 'kill0' else (1, 0)
  try:
    _wait_for_checkpoint(workdir, 2, procs)
    procs[victim].send_signal(
        signal.SIGSTOP if case == 'hang' else signal.SIGKILL)
    signalled = time.time()
    status = procs[survivor].wait(timeout=300)
    seconds = time.time() - signalled
  finally:
    for p in procs:
      p.kill()
      p.wait()
    for log in logs:
      log.close()
  with open(f'{workdir}.p{survivor}.log', 'rb') as f:
    text = f.read().decode(errors='replace')
  return status, seconds, _SENTENCE in text, _ABORT in text


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--cases', nargs='+', default=['kill', 'hang'],
                      choices=['kill', 'hang', 'kill0'])
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix='smog_lost_')
  env = dict(environment(os.path.join(root, 'xla')),
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  data_dir = os.path.join(root, 'tfds')
  print(f'{args.repeats} repetitions of {args.cases}; logs in {root}')
  print('case   repeat  status  seconds  sentence  abort')
  tally = collections.Counter()
  for repeat in range(1, args.repeats + 1):
    for case in args.cases:
      status, seconds, sentence, abort = _once(root, case, repeat, data_dir,
                                               env)
      tally[case, status, sentence, abort] += 1
      print(f'{case:6} {repeat:6d}  {status:6d}  {seconds:7.1f}  '
            f'{str(sentence):>8}  {str(abort):>5}', flush=True)
  for (case, status, sentence, abort), count in sorted(tally.items()):
    print(f'{case}: {count} of {args.repeats} ended with status {status}, '
          f'sentence {sentence}, JAX abort {abort}')


if __name__ == '__main__':
  main()
