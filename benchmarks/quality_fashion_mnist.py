"""One Fashion-MNIST quality experiment: a short pre-training, then scoring.

Runs `smog_jax.main` on configs/fashion_mnist.py with `--config.*` overrides
for a fixed number of steps, then `smog_jax.linear_eval` in the given modes,
and prints (and appends to --log) one JSON line: overrides, steps, wall time,
median images/s, the load average before and after, and the accuracies.
The rows of docs/quality.md come from it.

  python3 benchmarks/quality_fashion_mnist.py --name z0 --steps 300 \
      --modes knn,fast -- --config.model.zero_init_residual=False
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

RUNS = '/tmp/quality_fashion_mnist'


def _load() -> float:
  return os.getloadavg()[0]


def _run(args: list[str], log_path: str) -> float:
  start = time.time()
  with open(log_path, 'w') as log:
    subprocess.run([sys.executable, '-m'] + args, check=True, stdout=log,
                   stderr=subprocess.STDOUT)
  return time.time() - start


def _images_per_sec(workdir: str) -> float:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rates = [r['images_per_sec'] for r in map(json.loads, f)
             if 'images_per_sec' in r]
  # The first logged interval includes compilation.
  return statistics.median(rates[1:] or rates)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--name', required=True)
  parser.add_argument('--steps', type=int, required=True)
  parser.add_argument('--modes', default='knn',
                      help='comma-separated linear_eval modes')
  parser.add_argument('--config', default='configs/fashion_mnist.py')
  parser.add_argument('--log', default=os.path.join(RUNS, 'results.jsonl'))
  parser.add_argument('overrides', nargs='*',
                      help='--config.* overrides of the pre-training')
  args = parser.parse_args()

  workdir = os.path.join(RUNS, args.name)
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  row = dict(name=args.name, config=args.config, overrides=args.overrides,
             steps=args.steps, load_before=_load())
  row['pretrain_wall_s'] = _run(
      ['smog_jax.main', f'--config={args.config}', f'--workdir={workdir}',
       f'--config.total_steps={args.steps}'] + args.overrides,
      os.path.join(workdir, 'main.log'))
  row['load_after_pretrain'] = _load()
  row['images_per_sec'] = _images_per_sec(workdir)
  for mode in filter(None, args.modes.split(',')):
    out = os.path.join(workdir, f'eval_{mode}')
    row[f'{mode}_wall_s'] = _run(
        ['smog_jax.linear_eval',
         '--config=configs/linear_eval.py:fashion_mnist',
         f'--config.mode={mode}', f'--config.pretrained={workdir}',
         f'--workdir={out}'], out + '.log')
    with open(os.path.join(out, 'results.json')) as f:
      row[f'{mode}_top1'] = json.load(f)['top1']
  row['load_after'] = _load()
  line = json.dumps(row)
  print(line)
  with open(args.log, 'a') as f:
    f.write(line + '\n')


if __name__ == '__main__':
  main()
