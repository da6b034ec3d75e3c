"""Preparing a folder of images (smog_jax.prepare): images/s and peak memory.

Writes `--images` ~500x375 JPEGs (benchmarks/input_pipeline.py's synthetic
photographs, 256 distinct ones, each file its own copy) into nested folders
of a temporary directory, then times `python -m smog_jax.prepare` on it as a
user runs it (one preparing process per core), sampling the resident memory
of its whole process tree (the binary and its preparing processes, summed)
every 20 ms with psutil.

Usage: python benchmarks/prepare_folder.py [--images 20000] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_folder(root: str, n: int) -> int:
  """`n` JPEG files under `root`, 1,000 per sub-folder; their bytes."""
  jpegs = input_pipeline.synthetic_jpegs(256)
  total = 0
  for i in range(n):
    sub = os.path.join(root, f'part{i // 1000:03d}')
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f'img{i:06d}.jpg'), 'wb') as f:
      f.write(jpegs[i % len(jpegs)])
    total += len(jpegs[i % len(jpegs)])
  return total


def tree_rss(proc: psutil.Process) -> int:
  """Resident bytes of `proc` and its descendants."""
  total = 0
  for p in [proc, *proc.children(recursive=True)]:
    try:
      total += p.memory_info().rss
    except psutil.Error:
      pass
  return total


def run_prepare(folder: str, data_dir: str, workers: int | None):
  """`(seconds, peak tree RSS bytes, log)` of one prepare run."""
  command = [sys.executable, '-m', 'smog_jax.prepare', '--folder', folder,
             '--data_dir', data_dir]
  if workers:
    command += ['--workers', str(workers)]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  start = time.perf_counter()
  proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  watched, peak = psutil.Process(proc.pid), 0
  while proc.poll() is None:
    peak = max(peak, tree_rss(watched))
    time.sleep(0.02)
  seconds = time.perf_counter() - start
  log = proc.stdout.read()
  if proc.returncode:
    raise RuntimeError(log[-2000:])
  return seconds, peak, log


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--images', type=int, default=20000)
  parser.add_argument('--workers', type=int, default=None)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    folder = os.path.join(tmp, 'images')
    size = write_folder(folder, args.images)
    print(f'{args.images} JPEGs of ~500x375 px, {size / 2**20:.0f} MiB; '
          f'{len(os.sched_getaffinity(0))} cores.')
    seconds, peak, log = run_prepare(folder, os.path.join(tmp, 'tfds'),
                                     args.workers)
    rates = [line for line in log.splitlines() if 'files (' in line]
    print(f'prepare: {seconds:.1f} s for the whole command, '
          f'{args.images / seconds:.0f} images/s; peak memory of its process '
          f'tree {peak / 2**20:.0f} MiB')
    print('its own last progress line: ' + rates[-1].split('] ')[-1])
    seconds, _, _ = run_prepare(folder, os.path.join(tmp, 'tfds'),
                                args.workers)
    print(f'again, unchanged folder (listing only, the copy reused): '
          f'{seconds:.1f} s')


if __name__ == '__main__':
  main()
