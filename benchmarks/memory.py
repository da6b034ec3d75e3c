"""Per-device memory of the compiled SMoG train step, from XLA (no run).

For each backbone's ImageNet recipe (multi-crop 2 x 224 + 4 x 96 px, 3 x 3000
groups, memory bank of 1,281,167 rows split over the devices), compiles the
train step on a mesh of `--devices` devices at each per-device batch, with
and without `model.remat`, and prints XLA's memory analysis of one device:
arguments (state shard + batch shard), outputs, aliased (donated state),
temporaries, and peak ~ arguments + outputs - aliased + temporaries. Nothing
is allocated or run, so any backend can size any pod slice; on CPU the
devices are `--devices` fake host devices.

  python benchmarks/memory.py
  python benchmarks/memory.py --models resnet50 --batches 32 --remat 0,1
"""

from __future__ import annotations

import argparse
import os
import sys
import time

RECIPES = {
    'resnet50': ('imagenet_resnet50', ''),
    'swin_t': ('imagenet_swin_t', None),
    'vit_b16': ('imagenet_vit_s16', 'b16'),
    'vit_s16': ('imagenet_vit_s16', ''),
}
IMAGENET_TRAIN = 1_281_167
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'configs')


def estimated_peak_bytes(analysis) -> int:
  """One device's peak from XLA's `memory_analysis()` of a compiled step:
  arguments + outputs - aliased (donated) + temporaries."""
  return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes -
          analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)


def _parse():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--models', default='resnet50,swin_t,vit_b16')
  p.add_argument('--batches', default='32,64,128',
                 help='per-device batch sizes')
  p.add_argument('--remat', default='0,1', help='remat settings (0/1)')
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--devices', type=int, default=8,
                 help='mesh size; on CPU, the number of fake devices')
  return p.parse_args()


def main():
  args = _parse()
  if os.environ.get('JAX_PLATFORMS', 'cpu') == 'cpu':
    os.environ['XLA_FLAGS'] = (
        os.environ.get('XLA_FLAGS', '') +
        f' --xla_force_host_platform_device_count={args.devices}')
  import jax  # pylint: disable=g-import-not-at-top
  from smog_jax import dry_run, recipes, sharding  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh(jax.devices()[:args.devices])
  gib = 2.0**-30
  print(f'backend={jax.default_backend()} devices={mesh.size} '
        f'({jax.devices()[0].device_kind}) dtype={args.dtype} '
        f'N={IMAGENET_TRAIN} load={os.getloadavg()[0]:.1f}')
  print('| backbone | batch/device | remat | arguments GiB | outputs GiB | '
        'aliased GiB | temporaries GiB | peak GiB | compile s |')
  print('|---|---|---|---|---|---|---|---|---|')
  for model in args.models.split(','):
    for per_device in (int(b) for b in args.batches.split(',')):
      for remat in (bool(int(r)) for r in args.remat.split(',')):
        name, variant = RECIPES[model]
        config = recipes.load_config(os.path.join(CONFIGS, f'{name}.py'),
                                     variant)
        config.batch_size = per_device * mesh.size
        config.model.dtype = args.dtype
        config.model.remat = remat
        start = time.perf_counter()
        compiled = dry_run.lower(config, mesh, IMAGENET_TRAIN,
                                 ('train_step',))['train_step'].compile()
        seconds = time.perf_counter() - start
        m = compiled.memory_analysis()
        peak = estimated_peak_bytes(m)
        print(f'| {model} | {per_device} | {remat} | '
              f'{m.argument_size_in_bytes * gib:.2f} | '
              f'{m.output_size_in_bytes * gib:.2f} | '
              f'{m.alias_size_in_bytes * gib:.2f} | '
              f'{m.temp_size_in_bytes * gib:.2f} | {peak * gib:.2f} | '
              f'{seconds:.0f} |', flush=True)
  sys.stdout.flush()


if __name__ == '__main__':
  main()
