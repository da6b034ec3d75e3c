"""Multi-crop SMoG train-step throughput of the reference backbones, in img/s.

For ResNet-50, Swin-T and ViT-S/16, one jitted `train.train_step` of the
ImageNet recipe's shapes (2 x 224 px online large, 4 x 96 px online small and
2 x 224 px target crops per image, 3 heads x 3000 groups, the recipe's
optimiser and heads) on synthetic uint8 crops (the device augmentation
included), in bfloat16 by default, over
every local device. Prints one line per backbone: compile seconds, step
milliseconds and images per second (global batch / step time; an image is
one example with all its 8 crops).

Needs only jax, flax, optax, numpy and ml_collections: nothing on its import
path imports TensorFlow (so the recipe files, which read the data settings,
are not loaded; the settings below mirror configs/imagenet_*.py).

  python benchmarks/gpu_backbones.py                 # accelerator
  python benchmarks/gpu_backbones.py --smoke         # seconds on a CPU
  python benchmarks/gpu_backbones.py --models swin_t --batch 64 --steps 20
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections

from smog_jax import data as data_lib
from smog_jax import models, optim, schedules, sharding, train, train_state

_HEADS = dict(projector_hidden_dim=2048, predictor_hidden_dim=2048,
              bn_momentum=0.9, remat=False)
_ADAMW = dict(name='adamw', start_lr=4e-5, peak_lr=1e-3, end_lr=4e-5,
              warmup_epochs=10, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8,
              exclude_1d_from_decay=True, grad_clip_norm=3.0)
BACKBONES = {
    'resnet50': (
        dict(backbone='resnet50', width=1.0, stem='imagenet',
             projection_dim=128, head_activation='relu',
             zero_init_residual=False, kernel_init='he_fan_out_normal',
             matmul_small_maps=True, padding='symmetric',
             backbone_bn='per_resolution', **_HEADS),
        dict(name='lars', start_lr=0.01, peak_lr=4.8, end_lr=0.0048,
             warmup_epochs=10, weight_decay=1e-6, momentum=0.9,
             trust_coefficient=0.001, exclude_1d_from_decay=False,
             grad_clip_norm=0.0)),
    'swin_t': (
        dict(backbone='swin_t', drop_path_rate=0.2, projection_dim=256,
             head_activation='gelu', head_gelu_approximate=False, **_HEADS),
        _ADAMW),
    'vit_s16': (
        dict(backbone='vit_s16', pooling='cls', base_image_size=224,
             layer_norm_epsilon=1e-6, drop_path_rate=0.1, projection_dim=256,
             head_activation='gelu', head_gelu_approximate=False, **_HEADS),
        _ADAMW),
}
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
  model, optimizer = BACKBONES[name]
  config = ml_collections.ConfigDict(dict(
      model=dict(model, dtype=args.dtype), optimizer=optimizer,
      smog=dict(num_heads=3, num_groups=3000, temperature=0.1,
                group_momentum_start=1.0, group_momentum_end=0.99,
                ema_momentum=0.999, ema_schedule='constant',
                centroid_gradient=False),
      crops=dict(large=2, small=4, large_size=224, small_size=96)))
  if args.smoke:
    config.model.update(SMOKE[name])
    config.smog.num_groups = 16
    config.crops.update(large_size=32, small_size=16)
  return config


def _batch(config, global_batch, mesh):
  """Random crops, made on the devices already sharded."""
  c = config.crops
  shapes = dict(online_large=(c.large, c.large_size),
                online_small=(c.small, c.small_size),
                target_large=(c.large, c.large_size))
  keys = dict(zip(shapes, jax.random.split(jax.random.PRNGKey(1), 3)))
  sharded = sharding.data_sharded(mesh)

  @functools.partial(jax.jit, static_argnums=(1, 2), out_shardings=sharded)
  def make(key, n, s):  # The host's uint8 crops.
    return jax.random.randint(key, (global_batch, n, s, s, 3), 0, 256,
                              jnp.int32).astype(jnp.uint8)

  batch = {k: make(keys[k], n, s) for k, (n, s) in shapes.items()}
  batch['index'] = jax.device_put(jnp.arange(global_batch, dtype=jnp.int32),
                                  sharded)
  batch['epoch'] = jax.device_put(jnp.zeros(global_batch, jnp.int32), sharded)
  return batch


def run(name: str, args, mesh) -> None:
  config = _config(name, args)
  network = models.build_network(config.model)
  sched = schedules.from_config(config, 100_000, 1_000)
  tx = optim.make_optimizer(config.optimizer, sched.learning_rate)
  # The reference's device augmentation (smog_jax.data's settings need no
  # TensorFlow).
  spec = data_lib.resolve(ml_collections.ConfigDict(dict(
      seed=0, batch_size=args.batch * mesh.size,
      data=data_lib.default_data_config('imagenet2012')))).augment_spec
  step_config = train.StepConfig.of(config.smog, sched, spec)
  size = config.crops.large_size
  create = functools.partial(
      train_state.create_train_state, network=network, tx=tx,
      image_shape=(size, size, 3), num_heads=config.smog.num_heads,
      num_groups=config.smog.num_groups)
  abstract = jax.eval_shape(create, jax.random.PRNGKey(0))
  state = jax.jit(create, out_shardings=train_state.state_sharding(
      abstract, mesh))(jax.random.PRNGKey(0))
  global_batch = args.batch * mesh.size
  batch = _batch(config, global_batch, mesh)
  step = train.jit_train_step(network, tx, step_config, mesh, state)

  start = time.perf_counter()
  step = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  for _ in range(2):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - start) / args.steps
  print(f'{name:9s} batch={global_batch} ({args.batch}/device) '
        f'compile={compile_s:.0f}s step={1e3 * step_s:.1f}ms '
        f'{global_batch / step_s:.0f} img/s loss={float(metrics["loss"]):.3f}',
        flush=True)


def main():
  args = _parse()
  mesh = sharding.make_mesh()
  print(f'backend={jax.default_backend()} devices={mesh.size} '
        f'({jax.devices()[0].device_kind}) dtype={args.dtype} '
        f'crops=2x{224 if not args.smoke else 32}+4x'
        f'{96 if not args.smoke else 16} smoke={args.smoke} '
        f'load={os.getloadavg()[0]:.1f}', flush=True)
  for name in args.models.split(','):
    run(name, args, mesh)


if __name__ == '__main__':
  main()
