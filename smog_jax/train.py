"""The SMoG train step: one pure function, compiled once, sharded by `jax.jit`.

Read it against the spec's "One training step" section. The batch carries the
host's uint8 crops; the step first augments them (smog_jax/augment.py), then,
per head h with old centroids C_h:
  1. y_t = assign(z'_t, C_h) for each target crop t (old centroids, no grad);
  2. C_h <- momentum_update(C_h, z_j, assign(z_j, C_h), beta) with z_j the
     online projection of large crop j = h mod n_large, over the global batch;
  3. loss = CE(p_v . C_h_new^T / tau, y_t) averaged over heads, the V online
     crops, the T target crops and the examples;
  4. optimiser step on the online parameters, then EMA of the target.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from smog_jax import augment
from smog_jax import grouping
from smog_jax import random_streams
from smog_jax import sharding as sharding_lib
from smog_jax.models.heads import SMoGNetwork
from smog_jax.models.transformer import DROPOUT_RNG
from smog_jax.schedules import Schedules
from smog_jax.train_state import TrainState, state_sharding, target_subtree

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the train step.

  Attributes:
    schedules: learning rate, EMA momentum and group momentum per step.
    augment: the photometric augmentation of the views.
    temperature: tau of the group contrastive loss.
    centroid_gradient: False (the reference) treats the updated centroids as
      constants in the loss; True lets gradients flow through the momentum
      update into the online projections, as the paper's prose says.
  """
  schedules: Schedules
  augment: augment.AugmentSpec
  temperature: float = 0.1
  centroid_gradient: bool = False

  @classmethod
  def of(cls, smog: ml_collections.ConfigDict, schedules: Schedules,
         augment_spec: augment.AugmentSpec) -> StepConfig:
    """The step's settings: the config's `smog` block, the run's schedules
    and its augmentation (`DataSettings.augment_spec`)."""
    return cls(schedules, augment_spec, smog.temperature,
               smog.centroid_gradient)


def _merge_crops(images: jax.Array) -> jax.Array:
  """`[B, n, H, W, C] -> [B * n, H, W, C]`, example-major.

  Example-major order keeps each device's examples in one contiguous block, so
  the reshape needs no communication when the batch is sharded.
  """
  return images.reshape((-1,) + images.shape[2:])


def _split_crops(x: jax.Array, num_crops: int) -> jax.Array:
  """`[B * n, D] -> [n, B, D]`, inverse of `_merge_crops` on outputs."""
  return jnp.swapaxes(x.reshape((-1, num_crops) + x.shape[1:]), 0, 1)


def _entropy_of_usage(assignments: jax.Array, num_groups: int) -> jax.Array:
  """Entropy (nats) of the histogram of one head's assignments."""
  counts = jnp.bincount(assignments.reshape(-1), length=num_groups)
  probs = counts / jnp.maximum(counts.sum(), 1)
  return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(probs), 0.0))


@jax.named_scope('ema')  # Named in profiles.
def ema_update(target: Any, online: Any, momentum: jax.Array) -> Any:
  """target <- m * target + (1 - m) * online, leaf by leaf."""
  return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o,
                      target, online)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    network: SMoGNetwork,
    tx: optax.GradientTransformation,
    config: StepConfig,
) -> tuple[TrainState, Metrics]:
  """One SMoG step on a global batch (layout: docs/architecture.md).

  Args:
    state: the train state.
    batch: uint8 crops `online_large [B, nL, S, S, C]`, `online_small
      [B, nS, s, s, C]`, `target_large [B, nL, S, S, C]`; `index [B]` and
      `epoch [B]`, which key each crop's augmentation.
    network: the SMoG network (static).
    tx: the optimiser (static).
    config: static step settings.

  Returns:
    The new state and scalar metrics (loss, schedule values, group usage).
  """
  step = state.step
  schedules = config.schedules
  group_momentum = schedules.group_momentum(step)
  ema_momentum = schedules.ema_momentum(step)
  views = augment.train_views(batch, step, config.augment)
  num_large = views['online_large'].shape[1]
  num_small = views['online_small'].shape[1] if 'online_small' in views else 0
  num_heads, num_groups, _ = state.centroids.shape
  old_centroids = state.centroids

  # 1. Targets from the target network (train-mode BN, as a momentum encoder
  #    is run) and the centroids *before* this step's update. The target
  #    network's only gradient-free path: stop_gradient makes it explicit.
  target_out, target_vars = network.apply(
      {'params': state.target_params, 'batch_stats': state.target_batch_stats},
      _merge_crops(views['target_large']), train=True, with_predictor=False,
      mutable=['batch_stats'])
  target_z = jax.lax.stop_gradient(_split_crops(
      grouping.l2_normalize(target_out['projection']), num_large))
  # [H, T, B]: every head assigns every target crop.
  targets = jax.vmap(
      lambda c: jax.vmap(lambda z: grouping.assign(z, c))(target_z))(
          old_centroids)

  # Stochastic depth (ViT, Swin) runs on the online network only: its applies
  # get a 'dropout' rng, the target's above none (drop path 0 on the target).
  dropout = lambda resolution: {
      DROPOUT_RNG: random_streams.dropout_key(state.rng, step, resolution)}

  def loss_fn(params):
    # Online branch. The backbone runs over both resolutions in one call,
    # each BatchNorm's statistics (running ones too) over all their pixels,
    # as the reference (`pooled_backbone_bn`); or once per resolution, each
    # over its own crops, running statistics from the large crops. The
    # projector and predictor run once over every crop's features (their
    # BatchNorm statistics pool large and small crops, as the reference).
    variables = {'params': params, 'batch_stats': state.batch_stats}
    crops = [views['online_large']] + ([views['online_small']] if num_small
                                       else [])
    merged = [_merge_crops(c) for c in crops]
    if network.pooled_backbone_bn and num_small:
      outputs, backbone_vars = network.apply(
          variables, tuple(merged), train=True, method='features',
          mutable=['batch_stats'], rngs=dropout(0))
    else:
      outputs, backbone_vars = [], None
      for resolution, images in enumerate(merged):
        out, new_vars = network.apply(
            variables, images, train=True, method='features',
            mutable=['batch_stats'], rngs=dropout(resolution))
        outputs.append(out)
        if resolution == 0:
          backbone_vars = new_vars
    features = [f.reshape(-1, c.shape[1], f.shape[-1])
                for f, c in zip(outputs, crops)]
    # Example-major [B * V, F], so the concatenation moves no data between
    # devices.
    out, head_vars = network.apply(
        variables, _merge_crops(jnp.concatenate(features, axis=1)),
        train=True, method='heads', mutable=['batch_stats'])
    # The backbone's statistics (ResNets) from the large crops, the heads'
    # from all crops.
    batch_stats = {
        name: (backbone_vars if name == 'backbone' else head_vars)[
            'batch_stats'][name] for name in state.batch_stats}
    num_views = num_large + num_small
    p = grouping.l2_normalize(
        _split_crops(out['prediction'], num_views))  # [V, B, D]
    z_large = grouping.l2_normalize(
        _split_crops(out['projection'], num_views)[:num_large])  # [nL,B,D]

    # 2. Synchronous momentum grouping from online large crop h mod nL,
    #    assigned to the old centroids; reductions over the global batch.
    z_update = z_large[jnp.arange(num_heads) % num_large]  # [H, B, D]
    if not config.centroid_gradient:
      z_update = jax.lax.stop_gradient(z_update)
    update_assignments = jax.vmap(grouping.assign)(
        jax.lax.stop_gradient(z_update), old_centroids)  # [H, B]
    new_centroids = jax.vmap(grouping.momentum_update,
                             in_axes=(0, 0, 0, None))(
                                 old_centroids, z_update, update_assignments,
                                 group_momentum)

    # 3. Loss against the *updated* centroids, all V x T crop pairs.
    head_losses = jax.vmap(
        lambda c, y: grouping.group_contrastive_loss(
            p[:, None], c, y[None], config.temperature))(new_centroids, targets)
    aux = dict(batch_stats=batch_stats,
               centroids=jax.lax.stop_gradient(new_centroids),
               update_assignments=update_assignments,
               z_large=jax.lax.stop_gradient(z_large), p=p)
    return jnp.mean(head_losses), aux

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)

  # 4. Optimiser step on the online network, then EMA of the target towards
  #    the *updated* online backbone and projector.
  with jax.named_scope('optimizer'):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
  target_params = ema_update(state.target_params, target_subtree(params),
                             ema_momentum)

  memory_bank = state.memory_bank
  if memory_bank is not None:
    memory_bank = memory_bank.at[:, batch['index']].set(aux['z_large'])

  new_state = state.replace(
      step=step + 1, params=params, batch_stats=aux['batch_stats'],
      target_params=target_params,
      target_batch_stats=target_vars['batch_stats'], opt_state=opt_state,
      centroids=aux['centroids'], memory_bank=memory_bank)

  # Monitoring: how many groups the grouping used, how evenly, and how often
  # the online crops already predict their target group.
  used = jax.vmap(lambda a: jnp.sum(jnp.bincount(a, length=num_groups) > 0))(
      aux['update_assignments'])
  entropy = jax.vmap(lambda a: _entropy_of_usage(a, num_groups))(
      aux['update_assignments'])
  predicted = jax.vmap(lambda c: grouping.assign(
      aux['p'].reshape(-1, aux['p'].shape[-1]), c))(aux['centroids'])
  agreement = jnp.mean(
      predicted.reshape(num_heads, -1, 1, targets.shape[-1]) ==
      targets[:, None])
  metrics = dict(
      loss=loss,
      learning_rate=schedules.learning_rate(step),
      ema_momentum=ema_momentum,
      group_momentum=group_momentum,
      groups_used=jnp.min(used).astype(jnp.float32),
      assignment_entropy=jnp.mean(entropy),
      target_agreement=agreement.astype(jnp.float32),
      grad_norm=optax.tree.norm(grads),
      # 1.0 when the loss, a centroid or a new parameter is NaN/inf: the
      # loop stops on it rather than saving such a state.
      nonfinite=1.0 - (jnp.isfinite(loss) &
                       jnp.all(jnp.isfinite(aux['centroids'])) &
                       jnp.isfinite(optax.tree.norm(params))),
  )
  return new_state, metrics


def jit_train_step(
    network: SMoGNetwork,
    tx: optax.GradientTransformation,
    config: StepConfig,
    mesh: Mesh,
    state: TrainState,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """`train_step` compiled over `mesh`, the state donated (updated in place).

  Args:
    network, tx, config: bound as static arguments.
    mesh: the 1-D `data` mesh.
    state: an example state (only its structure is used for the shardings).

  Returns:
    `step_fn(state, batch) -> (state, metrics)`.
  """
  shardings = state_sharding(state, mesh)
  step_fn = functools.partial(train_step, network=network, tx=tx,
                              config=config)
  return jax.jit(
      step_fn,
      in_shardings=(shardings, sharding_lib.data_sharded(mesh)),
      out_shardings=(shardings, sharding_lib.replicated(mesh)),
      donate_argnums=(0,))
