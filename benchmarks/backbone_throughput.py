"""Forward+backward throughput of backbone configs, in images per second.

Each config is timed on one jitted step: forward of the backbone (+ optionally
the projector and predictor) in train mode on random images, the backward pass
to the parameters (loss = mean of the outputs), nothing else (no optimiser, no
target network, no SMoG math). FLOPs per image come from XLA's cost analysis of
the compiled forward+backward (the backward is about 2x the forward), and from
an analytic count of the forward convolutions (multiply-adds x 2).

A config is a comma-separated list of `key=value` overrides of the defaults
below (keys of `config.model` plus `res`, `batch` and `heads`):

  backbone=resnet18  width=0.5  stem=cifar  stage_sizes=2-2-2-2 (with
  backbone=resnet)  block=basic  dtype=float32  res=28  batch=256
  heads=0|1 (include projector+predictor)  proj=1024  pred=1024
  matmul=1|0 (model.matmul_small_maps: convolutions onto <= 2x2 maps as
  one matmul)

Presets (`--preset NAME`) run a list of configs; `--cfg` adds more. XLA
flags must be set before JAX starts: pass them with `--xla_flags='...'` (they
are appended to $XLA_FLAGS) or set XLA_FLAGS yourself. Restrict threads with
`taskset -c 0 python ...`. The machine is shared: every config is timed
`--repeats` times (each `--steps` steps after 2 warm-up steps) and the
minimum is reported, with the 1-minute load average before the run.

  python benchmarks/backbone_throughput.py --preset widths
  python benchmarks/backbone_throughput.py --cfg width=0.5,res=28 \
      --cfg width=0.5,res=14 --cfg width=0.25,res=28,dtype=bfloat16
  python benchmarks/backbone_throughput.py --preset smog_default \
      --xla_flags='--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
"""

from __future__ import annotations

import argparse
import os
import sys
import time

PRESETS = {
    # The default config's crops, one resolution at a time.
    'smog_default': ['width=0.5,res=28', 'width=0.5,res=14'],
    'widths': ['width=0.5,res=28', 'width=0.375,res=28', 'width=0.25,res=28',
               'width=0.125,res=28'],
    'depths': [
        'backbone=resnet18,width=0.5,res=28',
        'backbone=resnet,stage_sizes=1-1-1-1,width=0.5,res=28',
        'backbone=resnet,stage_sizes=2-2-2,width=0.5,res=28',
        'backbone=resnet,stage_sizes=1-1-1,width=0.5,res=28',
        'backbone=resnet18,width=0.25,res=28',
        'backbone=resnet,stage_sizes=1-1-1-1,width=0.25,res=28',
        'backbone=resnet,stage_sizes=2-2-2,width=0.25,res=28',
    ],
    'stems': ['width=0.5,res=28,stem=cifar', 'width=0.5,res=28,stem=imagenet',
              'width=0.25,res=28,stem=cifar',
              'width=0.25,res=28,stem=imagenet'],
    'small_crops': ['width=0.5,res=28', 'width=0.5,res=14', 'width=0.5,res=12',
                    'width=0.5,res=16', 'width=0.25,res=28',
                    'width=0.25,res=14', 'width=0.25,res=12'],
    'dtypes': ['width=0.5,res=28,dtype=float32',
               'width=0.5,res=28,dtype=bfloat16'],
    'batches': ['width=0.5,res=28,batch=64', 'width=0.5,res=28,batch=128',
                'width=0.5,res=28,batch=256', 'width=0.5,res=28,batch=512'],
    # The Fashion-MNIST stride-2 networks; a 4th stage runs at 2x2.
    'small_maps': [
        'stem=cifar_stride2,backbone=resnet,stage_sizes=1-1-1,heads=1,'
        'proj=2048,pred=2048,dtype=bfloat16',
        'stem=cifar_stride2,backbone=resnet,stage_sizes=1-1-1-1,heads=1,'
        'proj=2048,pred=2048,dtype=bfloat16,matmul=0',
        'stem=cifar_stride2,backbone=resnet,stage_sizes=1-1-1-1,heads=1,'
        'proj=2048,pred=2048,dtype=bfloat16,matmul=1'],
    'heads': ['width=0.5,res=28,heads=0', 'width=0.5,res=28,heads=1',
              'width=0.5,res=28,heads=1,proj=512,pred=512'],
}

DEFAULTS = dict(backbone='resnet18', width=0.5, stem='cifar',
                stage_sizes='2-2-2-2', block='basic', dtype='float32', res=28,
                batch=256, heads=0, proj=1024, pred=1024, channels=1,
                matmul=1)


def parse_cfg(spec: str) -> dict:
  cfg = dict(DEFAULTS)
  for item in filter(None, spec.split(',')):
    key, _, value = item.partition('=')
    if key not in cfg:
      raise SystemExit(f'Unknown key {key!r} in {spec!r}; keys: {sorted(cfg)}')
    cfg[key] = type(DEFAULTS[key])(value)
  return cfg


def conv_macs(cfg: dict) -> float:
  """Analytic multiply-adds of the backbone's convolutions, per image."""
  from smog_jax.models.resnet import RESNET_DEPTHS
  if cfg['backbone'] == 'resnet':
    stages = [int(s) for s in cfg['stage_sizes'].split('-')]
    bottleneck = cfg['block'] == 'bottleneck'
  else:
    sizes, block = RESNET_DEPTHS[int(cfg['backbone'][len('resnet'):])]
    stages, bottleneck = list(sizes), block.expansion == 4
  base = max(1, round(64 * cfg['width']))
  h = cfg['res']
  cin = cfg['channels']
  if cfg['stem'] == 'imagenet':
    h = -(-h // 2)
    macs = h * h * 49 * cin * base
    h = -(-h // 2)
  else:
    h = -(-h // 2) if cfg['stem'] == 'cifar_stride2' else h
    macs = h * h * 9 * cin * base
  cin = base
  for i, n in enumerate(stages):
    f = base * 2**i
    for j in range(n):
      stride = 2 if i > 0 and j == 0 else 1
      ho = -(-h // stride)
      if bottleneck:
        macs += h * h * cin * f + ho * ho * 9 * f * f + ho * ho * f * 4 * f
        out = 4 * f
      else:
        macs += ho * ho * 9 * cin * f + ho * ho * 9 * f * f
        out = f
      if cin != out or stride != 1:
        macs += ho * ho * cin * out
      cin, h = out, ho
  return float(macs)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', action='append', default=[],
                      choices=sorted(PRESETS))
  parser.add_argument('--cfg', action='append', default=[])
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--xla_flags', default='')
  parser.add_argument('--devices', type=int, default=0,
                      help='>1: split the batch over this many CPU devices '
                      '(--xla_force_host_platform_device_count).')
  args = parser.parse_args()
  if args.xla_flags or args.devices > 1:
    flags = os.environ.get('XLA_FLAGS', '') + ' ' + args.xla_flags
    if args.devices > 1:
      flags += f' --xla_force_host_platform_device_count={args.devices}'
    os.environ['XLA_FLAGS'] = flags.strip()

  sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from smog_jax import models

  specs = [s for p in args.preset for s in PRESETS[p]] + args.cfg
  if not specs:
    specs = PRESETS['smog_default']
  devices = jax.devices()[:max(1, args.devices)]
  mesh = Mesh(np.asarray(devices), ('data',))
  print(f'jax {jax.__version__}, {len(devices)} device(s), '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}, '
        f'cpus={len(os.sched_getaffinity(0))}, '
        f'load={os.getloadavg()[0]:.2f}', flush=True)
  header = (f'{"config":<58} {"MFLOP/img":>9} {"XLA MFLOP":>9} '
            f'{"step ms":>9} {"img/s":>8} {"GFLOP/s":>8}')
  print(header)
  for spec in specs:
    cfg = parse_cfg(spec)
    mcfg = ml_collections.ConfigDict(dict(
        backbone=cfg['backbone'], width=cfg['width'], stem=cfg['stem'],
        stage_sizes=tuple(int(s) for s in cfg['stage_sizes'].split('-')),
        block=cfg['block'], dtype=cfg['dtype'], bn_momentum=0.9,
        projector_hidden_dim=cfg['proj'], predictor_hidden_dim=cfg['pred'],
        projection_dim=128, head_activation='relu', remat=False,
        zero_init_residual=False, kernel_init='he_fan_out_normal',
        matmul_small_maps=bool(cfg['matmul']), padding='symmetric',
        backbone_bn='per_resolution'))
    if cfg['heads']:
      net = models.build_network(mcfg)
      apply_out = lambda out: out['prediction']
    else:
      net = models.build_backbone(mcfg)
      apply_out = lambda out: out
    b, r = cfg['batch'], cfg['res']
    x = np.random.default_rng(0).normal(
        size=(b, r, r, cfg['channels'])).astype(np.float32)
    x = jax.device_put(x, NamedSharding(mesh, P('data')))
    variables = net.init(jax.random.PRNGKey(0), x[:2], train=False)
    params, stats = variables['params'], variables['batch_stats']

    def step(params, stats, x):
      def loss_fn(p):
        out, new_vars = net.apply({'params': p, 'batch_stats': stats}, x,
                                  train=True, mutable=['batch_stats'])
        return jnp.mean(apply_out(out).astype(jnp.float32)), new_vars
      grads, new_vars = jax.grad(loss_fn, has_aux=True)(params)
      # A cheap use of the gradients so that nothing is dead code.
      params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)
      return params, new_vars['batch_stats']

    fn = jax.jit(step, donate_argnums=(0, 1))
    compiled = fn.lower(params, stats, x).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    xla_flops = float((cost or {}).get('flops', float('nan'))) / b
    for _ in range(2):
      params, stats = compiled(params, stats, x)
    jax.block_until_ready(params)
    best = float('inf')
    for _ in range(args.repeats):
      start = time.perf_counter()
      for _ in range(args.steps):
        params, stats = compiled(params, stats, x)
      jax.block_until_ready(params)
      best = min(best, (time.perf_counter() - start) / args.steps)
    fwd_flops = 2 * conv_macs(cfg)
    # fwd + bwd (input and weight gradients) ~ 3x the forward convolutions.
    print(f'{spec:<58} {fwd_flops / 1e6:9.1f} {xla_flops / 1e6:9.1f} '
          f'{1e3 * best:9.1f} {b / best:8.1f} '
          f'{3 * fwd_flops * b / best / 1e9:8.1f}', flush=True)


if __name__ == '__main__':
  main()
