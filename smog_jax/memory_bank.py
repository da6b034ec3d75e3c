"""Memory bank and regrouping (spec: "Regrouping (re-clustering)").

The bank `[n_large, N, D]` lives in the train state, split over devices along
the example axis. The train step overwrites the rows of its batch with the
online projections of the large crops; before training, one forward pass over
the data set fills it (`fill_bank_step`). At every epoch start, `regroup`
replaces each head's centroids by spherical k-means on one of the banks and
resets the target network to the online one. Both run on device, jitted.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from smog_jax import augment
from smog_jax import grouping
from smog_jax import sharding as sharding_lib
from smog_jax.models.heads import SMoGNetwork
from smog_jax.train_state import TrainState, state_sharding, target_copy


def fill_bank_step(state: TrainState, batch: dict[str, jax.Array], *,
                   network: SMoGNetwork, spec: augment.AugmentSpec
                   ) -> TrainState:
  """Writes the online projections of `batch['large']` into the bank.

  The uint8 crops get pipeline A's augmentation, keyed by the bank stream.
  BatchNorm uses the batch statistics, as in the train step, but the running
  statistics are left untouched: filling the bank is not training. Padding
  rows carry an out-of-range index and are dropped by the scatter.
  """
  index = batch['index']
  images = augment.augment_views(
      batch['large'], spec, stream=augment.STREAM_BANK,
      epoch=jnp.zeros_like(index), index=index, pipeline=0)
  num_crops = images.shape[1]
  out, _ = network.apply(
      {'params': state.params, 'batch_stats': state.batch_stats},
      images.reshape((-1,) + images.shape[2:]), train=True,
      with_predictor=False, mutable=['batch_stats'])
  z = grouping.l2_normalize(out['projection'])
  z = jnp.swapaxes(z.reshape(-1, num_crops, z.shape[-1]), 0, 1)
  bank = state.memory_bank.at[:, index].set(z, mode='drop')
  return state.replace(memory_bank=bank)


def regroup(state: TrainState, epoch: jax.Array, *, num_iters: int
            ) -> TrainState:
  """k-means on the bank for every head, then target <- online.

  Head h clusters bank `(h + epoch) mod n_large`: the banks alternate between
  heads and between epochs. The k-means key is `fold_in(rng, epoch, h)`, so a
  resumed run regroups exactly as an uninterrupted one.
  """
  num_heads, num_groups, _ = state.centroids.shape
  num_banks = state.memory_bank.shape[0]
  epoch_key = jax.random.fold_in(state.rng, epoch)
  centroids = []
  for h in range(num_heads):
    bank = jax.lax.dynamic_index_in_dim(
        state.memory_bank, (h + epoch) % num_banks, 0, keepdims=False)
    centroids.append(grouping.kmeans(bank, num_groups, num_iters,
                                     jax.random.fold_in(epoch_key, h)))
  return state.replace(
      centroids=jnp.stack(centroids),
      target_params=target_copy(state.params),
      target_batch_stats=target_copy(state.batch_stats))


def jit_fill_bank_step(network: SMoGNetwork, spec: augment.AugmentSpec,
                       mesh: Mesh, state: TrainState
                       ) -> Callable[[TrainState, dict], TrainState]:
  shardings = state_sharding(state, mesh)
  return jax.jit(functools.partial(fill_bank_step, network=network, spec=spec),
                 in_shardings=(shardings, sharding_lib.data_sharded(mesh)),
                 out_shardings=shardings, donate_argnums=(0,))


def jit_regroup(num_iters: int, mesh: Mesh, state: TrainState
                ) -> Callable[[TrainState, jax.Array], TrainState]:
  shardings = state_sharding(state, mesh)
  return jax.jit(functools.partial(regroup, num_iters=num_iters),
                 in_shardings=(shardings, sharding_lib.replicated(mesh)),
                 out_shardings=shardings, donate_argnums=(0,))
