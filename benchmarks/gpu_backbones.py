"""Multi-crop SMoG train-step throughput of the reference backbones, in img/s.

For ResNet-50, Swin-T and ViT-S/16, one jitted `train.train_step` of the
ImageNet recipe's shapes (2 x 224 px online large, 4 x 96 px online small and
2 x 224 px target crops per image, 3 heads x 3000 groups, the recipe's
optimiser and heads) on synthetic uint8 crops (the device augmentation
included), in bfloat16 by default, over
every local device. Prints one line per backbone: compile seconds, step
milliseconds and images per second (global batch / step time; an image is
one example with all its 8 crops).

Each backbone's network, optimiser, grouping and crops are its recipe's
(configs/imagenet_*.py, read by `recipes.load_config`); only the batch and
dtype are set here. The step, state and crops are built as
benchmarks/train_step.py builds them (`train_step.setup`). Besides the
speed, each line gives the step's memory on one device: XLA's estimate from
the compiled program (arguments + outputs - donated + temporaries, as
benchmarks/memory.py) and, where the backend reports it (GPU), the
allocator's peak in use after the timed steps (the kNN monitor's memory
bank, not part of the step, is in benchmarks/memory.py's figures). Needs
only jax, flax, optax, numpy and ml_collections: nothing on its import path
imports TensorFlow.

  python benchmarks/gpu_backbones.py                 # accelerator
  python benchmarks/gpu_backbones.py --smoke         # seconds on a CPU
  python benchmarks/gpu_backbones.py --models swin_t --batch 64 --steps 20
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import ml_collections

import memory  # XLA's memory estimate, as memory.py reads it.
import train_step  # The step's construction and timing, shared.
from smog_jax import recipes, train

RECIPES = {'resnet50': 'imagenet_resnet50', 'swin_t': 'imagenet_swin_t',
           'vit_s16': 'imagenet_vit_s16'}
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'configs')
# --smoke: the same code path at CPU size (shrunken backbones, 32 / 16 px).
SMOKE = {
    'resnet50': dict(backbone='resnet', stage_sizes=(1, 1), block='bottleneck',
                     width=0.125, stem='cifar'),
    'swin_t': dict(backbone='swin', patch_size=4, embed_dim=8, depths=(2, 2),
                   num_heads=(1, 2), window=7),
    'vit_s16': dict(backbone='vit', patch_size=8, embed_dim=16, depth=2,
                    num_heads=2, base_image_size=32),
}


def _parse():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--models', default='resnet50,swin_t,vit_s16')
  p.add_argument('--batch', type=int, default=None,
                 help='per-device batch (default 128; 4 with --smoke)')
  p.add_argument('--steps', type=int, default=10,
                 help='timed steps, after 2 warm-up steps')
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--smoke', action='store_true',
                 help='tiny backbones, 32 / 16 px crops, 16 groups, batch 4')
  args = p.parse_args()
  if args.batch is None:
    args.batch = 4 if args.smoke else 128
  return args


def _config(name: str, args) -> ml_collections.ConfigDict:
  config = recipes.load_config(os.path.join(CONFIGS, RECIPES[name] + '.py'))
  config.batch_size = args.batch * jax.device_count()
  config.model.dtype = args.dtype
  if args.smoke:
    config.model.update(SMOKE[name])
    config.smog.num_groups = 16
    config.data.update(large_crop_size=32, small_image_size=16)
  return config


def _memory(compiled) -> str:
  """One device's memory of the step: XLA's estimate and the measured peak."""
  gib = 2.0**-30
  estimate = memory.estimated_peak_bytes(compiled.memory_analysis())
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return (f'memory/device: XLA {estimate * gib:.2f} GiB, peak in use ' +
          (f'{peak * gib:.2f} GiB' if peak is not None else 'not reported'))


def run(name: str, args) -> None:
  config = _config(name, args)
  pieces = train_step.setup(config)
  step_config = train.StepConfig.of(config.smog, pieces.schedules,
                                    pieces.spec)
  state = pieces.fresh_state()
  step = train.jit_train_step(pieces.network, pieces.tx, step_config,
                              pieces.mesh, state)
  start = time.perf_counter()
  step = step.lower(state, pieces.batch).compile()
  compile_s = time.perf_counter() - start
  for _ in range(2):  # Warm-up.
    state, _ = step(state, pieces.batch)
  step_s, state, metrics = train_step.timed_steps(step, state, pieces.batch,
                                                  args.steps)
  global_batch = config.batch_size
  d = config.data
  print(f'{name:9s} batch={global_batch} ({args.batch}/device) crops='
        f'{d.num_large_crops}x{d.large_crop_size}+'
        f'{d.num_small_crops}x{d.small_image_size} '
        f'compile={compile_s:.0f}s step={1e3 * step_s:.1f}ms '
        f'{global_batch / step_s:.0f} img/s loss={float(metrics["loss"]):.3f} '
        f'{_memory(step)}', flush=True)


def main():
  args = _parse()
  print(f'backend={jax.default_backend()} devices={jax.device_count()} '
        f'({jax.devices()[0].device_kind}) dtype={args.dtype} '
        f'smoke={args.smoke} load={os.getloadavg()[0]:.1f}', flush=True)
  for name in args.models.split(','):
    run(name, args)


if __name__ == '__main__':
  main()
