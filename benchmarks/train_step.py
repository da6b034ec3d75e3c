"""Times the SMoG train step against the backbone's own forward and backward.

The overhead SMoG adds (target forward aside, which any momentum method pays):
grouping, the group contrastive loss and the EMA update. Two jitted steps on
the same crops, network and optimiser:
  * `smog`: the real `train.train_step`;
  * `baseline`: online forward of the same crops + target forward + a loss that
    is a plain mean of the predictions (no grouping, no EMA).
Prints milliseconds per step and the relative overhead, and the cost of the
on-device photometric augmentation (smog_jax/augment.py) that both steps run on
the same uint8 crops: the SMoG step with it against the same step whose views
are only normalised (the augmentation patched out, for this measurement only),
and the augmentation alone.

  python benchmarks/train_step.py --config configs/fashion_mnist.py
  python benchmarks/train_step.py --config configs/fashion_mnist.py \
      --config.batch_size=128 --steps 10 --rounds 3
  python benchmarks/train_step.py --config configs/fashion_mnist.py --profile
  python benchmarks/train_step.py --config configs/fashion_mnist.py --profile \
      --top 20
  python benchmarks/train_step.py --config configs/fashion_mnist.py \
      --config.data.num_small_crops=4 --heads_per_resolution --rounds 8
  python benchmarks/train_step.py --config configs/fashion_mnist.py \
      --config.data.num_small_crops=4 --backbone_bn_per_resolution

The process is set up as `smog_jax.main` sets itself up (XLA:CPU's flag and
glibc's malloc: `startup.start_process`). `--profile` instead prints where
the SMoG step's time goes, per operation category (benchmarks/step_profile.py).
`--heads_per_resolution` instead times the SMoG step against the same step
with the projector and predictor run once per crop resolution (issue 30's
before), in alternating rounds of one process; `--backbone_bn_per_resolution`
against the same step with the backbone's BatchNorm per resolution.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

import step_profile
from smog_jax import augment, models, optim, schedules, sharding, startup
from smog_jax import train
from smog_jax import train_state
from smog_jax import data as data_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternating rounds; best kept.')
_PROFILE = flags.DEFINE_bool('profile', False, 'Per-operation profile of the '
                             'SMoG step instead of the comparisons.')
_TOP = flags.DEFINE_integer('top', 0, 'With --profile, also list the N HLO '
                            'instructions that took the most time.')
_HEADS_PER_RESOLUTION = flags.DEFINE_bool(
    'heads_per_resolution', False, 'Time the SMoG step against the same step '
    'with its heads run once per resolution instead of the comparisons.')
_BACKBONE_BN_PER_RESOLUTION = flags.DEFINE_bool(
    'backbone_bn_per_resolution', False, 'Time the SMoG step against the '
    "same step with model.backbone_bn='per_resolution' instead of the "
    'comparisons.')


def baseline_step(state, batch, *, network, tx, spec):
  """Backbone + heads forward/backward and target forward, no SMoG math."""
  batch = augment.train_views(batch, state.step, spec)
  target_out, _ = network.apply(
      {'params': state.target_params, 'batch_stats': state.target_batch_stats},
      train._merge_crops(batch['target_large']), train=True,
      with_predictor=False, mutable=['batch_stats'])

  def loss_fn(params):
    out = []
    # The views of the online crops (no small ones when the config has none).
    for key in sorted(batch.keys() & {'online_large', 'online_small'}):
      o, _ = network.apply({'params': params,
                            'batch_stats': state.batch_stats},
                           train._merge_crops(batch[key]), train=True,
                           mutable=['batch_stats'])
      out.append(jnp.mean(o['prediction']))
    return sum(out)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  # The target forward is returned, so XLA cannot drop it.
  target_mean = jnp.mean(target_out['projection'])
  return state.replace(params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state, step=state.step + 1), {
                           'loss': loss + target_mean}


def _normalised_views(batch, step, spec):
  """`augment.train_views` without the photometric ops: the "without" step."""
  del step
  scale = lambda x: ((x.astype(jnp.float32) / 255.0 - jnp.asarray(spec.mean)) /
                     jnp.asarray(spec.std))
  return {k: scale(batch[k]) for k in
          ('online_large', 'online_small', 'target_large')}


def normalised_step(network, tx, step_config, mesh, state, batch):
  """`train.jit_train_step` compiled with the augmentation patched out (the
  views only normalised), for measurements only."""
  fn = train.jit_train_step(network, tx, step_config, mesh, state)
  with mock.patch.object(augment, 'train_views', _normalised_views):
    return fn.lower(state, batch).compile()


class PerResolutionHeads:
  """The network with its heads applied once per crop resolution.

  The train step applies the heads once to every online crop's features,
  their BatchNorm statistics pooled over large and small crops. This wrapper
  splits that call into one per resolution (statistics per resolution, the
  running ones from the large crops), the layout before issue 30, so the two
  can be timed in one process. For measurements only.
  """

  def __init__(self, network, num_large: int, num_small: int):
    self._network = network
    self._num_large, self._num_small = num_large, num_small

  def __getattr__(self, name):
    return getattr(self._network, name)

  def apply(self, variables, inputs, *args, method=None, **kwargs):
    if method != 'heads':
      return self._network.apply(variables, inputs, *args, method=method,
                                 **kwargs)
    rows = inputs.reshape(-1, self._num_large + self._num_small,
                          inputs.shape[-1])
    parts = [self._network.apply(variables, train._merge_crops(r), *args,
                                 method=method, **kwargs)
             for r in (rows[:, :self._num_large], rows[:, self._num_large:])]
    merge = lambda *xs: train._merge_crops(jnp.concatenate(
        [x.reshape(rows.shape[0], -1, x.shape[-1]) for x in xs], axis=1))
    outputs = jax.tree.map(merge, *(out for out, _ in parts))
    return outputs, parts[0][1]


def timed_steps(fn, state, batch, steps):
  """Seconds per step of `steps` calls, the state and the last metrics."""
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = fn(state, batch)
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps, state, metrics


def _best_interleaved(fns, states, batch, steps, rounds):
  """Best seconds per step of each function, timed in alternating rounds.

  Alternating keeps a shared machine's changing load from favouring whichever
  variant happened to run in a quiet minute.
  """
  best = {name: float('inf') for name in fns}
  for name, fn in fns.items():  # Compile and warm up.
    states[name], _ = fn(states[name], batch)
  for _ in range(rounds):
    for name, fn in fns.items():
      seconds, states[name], _ = timed_steps(fn, states[name], batch, steps)
      best[name] = min(best[name], seconds)
  return best


# The schedules' length: a run of this many steps and steps an epoch.
TOTAL_STEPS, STEPS_PER_EPOCH = 1000, 100


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a timed SMoG step needs: its pieces, synthetic crops, a state."""
  mesh: Any
  network: Any
  schedules: schedules.Schedules
  tx: optax.GradientTransformation
  spec: augment.AugmentSpec
  host_batch: dict[str, np.ndarray]
  batch: dict[str, jax.Array]
  fresh_state: Callable[[], train_state.TrainState]


def setup(config) -> Setup:
  """The network, optimiser and schedules of `config`, random uint8 crops
  of one global batch (seeded), and a function making the initial state."""
  mesh = sharding.make_mesh()
  d = config.data
  network = models.build_network(config.model)
  sched = schedules.from_config(config, TOTAL_STEPS, STEPS_PER_EPOCH)
  tx = optim.make_optimizer(config.optimizer, sched.learning_rate)
  s, ss, c = d.large_crop_size, d.small_image_size, d.channels
  b = config.batch_size
  rng = np.random.default_rng(0)
  crops = lambda n, size: rng.integers(0, 256, (b, n, size, size, c), np.uint8)
  host_batch = dict(
      online_large=crops(d.num_large_crops, s),
      online_small=crops(d.num_small_crops, ss),
      target_large=crops(d.num_large_crops, s),
      index=np.arange(b, dtype=np.int32), epoch=np.zeros(b, np.int32),
      label=np.zeros(b, np.int32))

  def fresh_state():
    st = train_state.create_train_state(
        jax.random.PRNGKey(0), network, tx, (s, s, c), config.smog.num_heads,
        config.smog.num_groups)
    return jax.device_put(st, train_state.state_sharding(st, mesh))

  return Setup(mesh, network, sched, tx, data_lib.resolve(config).augment_spec,
               host_batch, sharding.shard_host_batch(host_batch, mesh),
               fresh_state)


def main(argv):
  del argv
  startup.start_process(multi_host=False)
  config = _CONFIG.value
  pieces = setup(config)
  mesh, network, sched, tx, spec, batch, fresh_state = (
      pieces.mesh, pieces.network, pieces.schedules, pieces.tx, pieces.spec,
      pieces.batch, pieces.fresh_state)
  d, b = config.data, config.batch_size
  s, ss = d.large_crop_size, d.small_image_size
  step_config = train.StepConfig.of(config.smog, sched, spec)
  st = fresh_state()
  smog_fn = train.jit_train_step(network, tx, step_config, mesh, st)
  if _PROFILE.value:
    for _ in range(3):  # Compile and warm up.
      st, _ = smog_fn(st, batch)
    result, st = step_profile.profile(smog_fn, st, batch, _STEPS.value)
    step_profile.print_table(result, _TOP.value)
    return
  if _HEADS_PER_RESOLUTION.value or _BACKBONE_BN_PER_RESOLUTION.value:
    if not config.data.num_small_crops:
      raise app.UsageError('Per resolution needs small crops '
                           '(--config.data.num_small_crops=4).')
    compare = (_compare_heads if _HEADS_PER_RESOLUTION.value else
               _compare_backbone_bn)
    compare(pieces, config, step_config, smog_fn, st)
    return
  shard = train_state.state_sharding(st, mesh)
  base_fn = jax.jit(functools.partial(baseline_step, network=network, tx=tx,
                                      spec=spec),
                    in_shardings=(shard, sharding.data_sharded(mesh)),
                    out_shardings=(shard, sharding.replicated(mesh)),
                    donate_argnums=(0,))
  plain_fn = normalised_step(network, tx, step_config, mesh, st, batch)
  views_fn = jax.jit(lambda st, bt: (st, augment.train_views(bt, st.step, spec)),
                     in_shardings=(shard, sharding.data_sharded(mesh)))
  fns = dict(base=base_fn, smog=smog_fn, plain=plain_fn, aug=views_fn)
  states = dict(base=fresh_state(), smog=st, plain=fresh_state(),
                aug=fresh_state())
  best = _best_interleaved(fns, states, batch, _STEPS.value, _ROUNDS.value)
  t_base, t_smog, t_plain, t_aug = (best[k] for k in fns)
  print(f'devices={jax.device_count()} ({jax.devices()[0].device_kind}) '
        f'batch={b} crops={d.num_large_crops}x{s}+{d.num_small_crops}x{ss} '
        f'heads={config.smog.num_heads} groups={config.smog.num_groups} '
        f'backbone={config.model.backbone} width={config.model.width}')
  print(f'baseline step: {1e3 * t_base:8.1f} ms   ({b / t_base:7.1f} img/s)')
  print(f'SMoG step:     {1e3 * t_smog:8.1f} ms   ({b / t_smog:7.1f} img/s)')
  print(f'SMoG overhead: {100 * (t_smog / t_base - 1):+.1f} %')
  print(f'SMoG step without the device augmentation: {1e3 * t_plain:8.1f} ms '
        f'({b / t_plain:7.1f} img/s); with it: {100 * (t_smog / t_plain - 1):+.1f} %')
  print(f'device augmentation alone: {1e3 * t_aug:8.1f} ms = '
        f'{100 * t_aug / t_smog:.1f} % of the SMoG step (which includes it)')


def _compare_heads(pieces, config, step_config, smog_fn, st):
  """Prints the pooled heads' step against per-resolution heads' step."""
  d = config.data
  per_resolution = PerResolutionHeads(pieces.network, d.num_large_crops,
                                      d.num_small_crops)
  _compare(pieces, config, 'heads', dict(
      pooled=smog_fn,
      per_resolution=train.jit_train_step(per_resolution, pieces.tx,
                                          step_config, pieces.mesh, st)), st)


def _compare_backbone_bn(pieces, config, step_config, smog_fn, st):
  """Prints the config's step against the same with the backbone's
  BatchNorm per resolution (`model.backbone_bn='per_resolution'`)."""
  if config.model.backbone_bn != 'pooled':
    raise app.UsageError('--backbone_bn_per_resolution compares with the '
                         "config's pooled BatchNorm: its model.backbone_bn "
                         f'is {config.model.backbone_bn!r}.')
  model = config.model.copy_and_resolve_references()
  model.backbone_bn = 'per_resolution'
  _compare(pieces, config, 'backbone BN', dict(
      pooled=smog_fn,
      per_resolution=train.jit_train_step(models.build_network(model),
                                          pieces.tx, step_config,
                                          pieces.mesh, st)), st)


def _compare(pieces, config, what, fns, st):
  """Times two steps in alternating rounds of one process; prints each
  round's figures and the first's time over the second's."""
  d = config.data
  first, second = fns
  states = {first: st, second: pieces.fresh_state()}
  first_loss = {}
  for name, fn in fns.items():  # Compile and warm up.
    states[name], metrics = fn(states[name], pieces.batch)
    first_loss[name] = float(metrics['loss'])
  rounds = {name: [] for name in fns}
  for i in range(_ROUNDS.value):
    # Each round swaps the order, so neither side always runs second.
    for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
      seconds, states[name], _ = timed_steps(fns[name], states[name],
                                             pieces.batch, _STEPS.value)
      rounds[name].append(seconds)
  print(f'devices={jax.device_count()} ({jax.devices()[0].device_kind}) '
        f'batch={config.batch_size} '
        f'crops={d.num_large_crops}x{d.large_crop_size}+'
        f'{d.num_small_crops}x{d.small_image_size} '
        f'backbone={config.model.backbone} width={config.model.width} '
        f'dtype={config.model.dtype}')
  # Different losses show the two steps differ.
  print('first step loss: ' + ', '.join(
      f'{name} {loss:.6f}' for name, loss in first_loss.items()))
  for name, seconds in rounds.items():
    print(f'{what} {name:>14}: ms/step by round ' +
          ' '.join(f'{1e3 * s:.1f}' for s in seconds) +
          f'; median {1e3 * np.median(seconds):.1f}, best '
          f'{1e3 * min(seconds):.1f} '
          f'({config.batch_size / min(seconds):.0f} img/s)')
  ratios = np.array(rounds[first]) / np.array(rounds[second])
  print(f'{first} / {second} by round: ' +
        ' '.join(f'{r:.3f}' for r in ratios) +
        f'; median {np.median(ratios):.3f}; best/best '
        f'{min(rounds[first]) / min(rounds[second]):.3f}')

if __name__ == '__main__':
  app.run(main)
