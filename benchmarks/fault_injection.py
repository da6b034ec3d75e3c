"""Kill -9 soak: a pre-training run killed N times ends as an uninterrupted one.

Runs `smog_jax.main` on the `:tiny` config (committed Fashion-MNIST fixture,
8 fake CPU devices, asynchronous checkpoints every 2 steps). One run goes
through uninterrupted; another is SIGKILLed `--kills` times at seeded random
points (during start-up, a few steps into training, or while an asynchronous
checkpoint write is in flight) and restarted after each kill. Then:
  * the final state equals the uninterrupted one leaf by leaf;
  * metrics.jsonl holds every step exactly once;
  * every checkpoint left in the workdir restores.
Prints each kill (where it aimed, the last logged step and the newest
checkpoint then, whether a write was in flight) and the outcome;
docs/reliability.md records a run.

  python3 benchmarks/fault_injection.py --kills 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from smog_jax import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, 'tests', 'data', 'fashion_mnist')


def command_line(workdir: str, data_dir: str, total_steps: int) -> list[str]:
  """`python -m smog_jax.main` on the `:tiny` config and the fixture."""
  return [sys.executable, '-m', 'smog_jax.main', '--config',
          os.path.join(REPO, 'configs', 'fashion_mnist.py:tiny'),
          '--workdir', workdir, f'--config.total_steps={total_steps}',
          '--config.checkpoint_every_steps=2',
          f'--config.data.data_dir={data_dir}',
          f'--config.data.fashion_mnist_idx_dir={FIXTURE}',
          '--config.data.download=False']


def environment(cache: str) -> dict[str, str]:
  """8 fake CPU devices and a persistent compilation cache in `cache`."""
  return dict(os.environ, PYTHONPATH=REPO,
              XLA_FLAGS='--xla_force_host_platform_device_count=8',
              JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
              JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


def _checkpoints(workdir: str, since: float = 0.0
                 ) -> tuple[list[int], bool]:
  """(finished steps, whether a write started after `since` is in flight).

  A write in flight is a temporary folder. One left by an earlier kill is
  older than `since`, and the next run removes it (orbax's
  cleanup_tmp_directories).
  """
  directory = os.path.join(workdir, 'checkpoints')
  names = os.listdir(directory) if os.path.isdir(directory) else []
  writing = False
  for name in names:
    try:
      writing |= ('tmp' in name and
                  os.path.getmtime(os.path.join(directory, name)) > since)
    except FileNotFoundError:  # Renamed into place meanwhile.
      pass
  return sorted(int(n) for n in names if n.isdigit()), writing


def _last_logged_step(workdir: str) -> int:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  try:
    return json.loads(lines[-1])['step'] if lines else 0
  except json.JSONDecodeError:  # A line being written.
    return 0


def _kill_once(command, env, workdir, rng, log) -> dict:
  """Starts a run and SIGKILLs it at a seeded random point; returns the hit.

  The point is one of: a random moment of the start-up (imports, restore,
  compile); a few steps into training; the next asynchronous checkpoint
  write, while its temporary folder exists.
  """
  started = time.time()
  start_step = _last_logged_step(workdir)
  proc = subprocess.Popen(command, env=env, stdout=log,
                          stderr=subprocess.STDOUT)
  point = rng.choice(('start-up', 'step', 'write'))
  wait = rng.uniform(1.0, 8.0)
  target = start_step + rng.randint(1, 4)
  while proc.poll() is None and time.time() < started + 600:
    if point == 'start-up' and time.time() >= started + wait:
      break
    if point == 'step' and _last_logged_step(workdir) >= target:
      break
    if point == 'write' and _checkpoints(workdir, started)[1]:
      break
    time.sleep(0.005)
  finished = proc.poll() is not None
  steps, writing = _checkpoints(workdir, started)
  if not finished:
    proc.send_signal(signal.SIGKILL)
  proc.wait()
  return dict(point=point, newest=steps[-1] if steps else None,
              logged=_last_logged_step(workdir), in_flight=writing,
              finished=finished)


def _same(a, b, rtol=1e-6, atol=1e-7) -> bool:
  return all(np.allclose(x, y, rtol=rtol, atol=atol)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--kills', type=int, default=20)
  parser.add_argument('--total_steps', type=int, default=60)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  root = tempfile.mkdtemp(prefix='smog_soak_')
  data_dir, env = os.path.join(root, 'tfds'), environment(os.path.join(root, 'xla'))
  log = open(os.path.join(root, 'runs.log'), 'ab')
  reference, killed = (os.path.join(root, n) for n in ('reference', 'killed'))
  command = lambda w: command_line(w, data_dir, args.total_steps)
  subprocess.run(command(reference), env=env, stdout=log,
                 stderr=subprocess.STDOUT, check=True)

  print(f'{args.kills} kills of a {args.total_steps}-step run (seed '
        f'{args.seed}); logs in {root}')
  print('kill  aimed at  last logged step  newest checkpoint  write in flight')
  for kill in range(1, args.kills + 1):
    hit = _kill_once(command(killed), env, killed, rng, log)
    if hit['finished']:
      raise SystemExit(f'The run finished before kill {kill}: raise '
                       '--total_steps.')
    print(f'{kill:4d}  {hit["point"]:>9}  {hit["logged"]:>16}  '
          f'{str(hit["newest"]):>17}  {str(hit["in_flight"]):>15}')
  subprocess.run(command(killed), env=env, stdout=log,
                 stderr=subprocess.STDOUT, check=True)

  _, want, _ = checkpointing.load_host_state(reference)
  _, got, step = checkpointing.load_host_state(killed)
  with open(os.path.join(killed, 'metrics.jsonl')) as f:
    logged = [json.loads(line)['step'] for line in f]
  readable = []
  for s in _checkpoints(killed)[0]:
    try:
      checkpointing.load_host_state(killed, s)
      readable.append(s)
    except Exception as e:  # pylint: disable=broad-except
      print(f'checkpoint {s} unreadable: {e}')
  print(f'final step {step}; state equals the uninterrupted run: '
        f'{_same(got, want)}')
  print(f'metrics.jsonl holds each step once: '
        f'{logged == list(range(1, args.total_steps + 1))}')
  print(f'checkpoints left {_checkpoints(killed)[0]}, all readable: '
        f'{readable == _checkpoints(killed)[0]}')


if __name__ == '__main__':
  main()
