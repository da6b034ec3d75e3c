"""Memory bank and regrouping (spec: "Regrouping (re-clustering)").

The bank `[n_large, N_pad, D]` lives in the train state, split over devices
along the example axis. N_pad is the number of training examples N rounded up
to a multiple of `BANK_ROW_MULTIPLE` and of the device count (`padded_rows`),
so that any N shards and a checkpoint resumes on another device count; rows
N.. are padding: never written, and ignored by k-means. The train step
overwrites the rows of its batch with the online projections of the large
crops; before training, one forward pass over the data set fills it
(`fill_bank_step`). At every epoch start (or `smog.regroups_per_epoch` times
an epoch), `regroup` replaces each head's centroids by spherical k-means on
one of the banks and resets the target network to the online one. Both run on
device, jitted.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from smog_jax import augment
from smog_jax import grouping
from smog_jax import random_streams
from smog_jax import sharding as sharding_lib
from smog_jax.models.heads import SMoGNetwork
from smog_jax.train_state import TrainState, state_sharding, target_copy


# Bank rows are a multiple of this and of the device count: the same rows on
# 1, 2, 3, 4, 6, 8, ... 1024, 1536, 3072 devices, so a checkpoint resumes on
# another device count.
BANK_ROW_MULTIPLE = 3072


def padded_rows(num_examples: int, num_shards: int) -> int:
  """Bank rows: `num_examples` rounded up to a multiple of both
  `BANK_ROW_MULTIPLE` and `num_shards`."""
  multiple = math.lcm(BANK_ROW_MULTIPLE, num_shards)
  return -(-num_examples // multiple) * multiple


def fill_bank_step(state: TrainState, batch: dict[str, jax.Array], *,
                   network: SMoGNetwork, spec: augment.AugmentSpec
                   ) -> TrainState:
  """Writes the online projections of `batch['large']` into the bank.

  The uint8 crops get pipeline A's augmentation, keyed by the bank stream.
  BatchNorm uses the batch statistics, as in the train step, but the running
  statistics are left untouched: filling the bank is not training. Padding
  rows of the batch (`mask` False) are sent to an out-of-range index and
  dropped by the scatter: their reported index, N, is a real row of a padded
  bank.
  """
  index = batch['index']
  images = augment.augment_views(
      batch['large'], spec, stream=random_streams.Stream.BANK,
      epoch=jnp.zeros_like(index), index=index, pipeline=0)
  num_crops = images.shape[1]
  out, _ = network.apply(
      {'params': state.params, 'batch_stats': state.batch_stats},
      images.reshape((-1,) + images.shape[2:]), train=True,
      with_predictor=False, mutable=['batch_stats'])
  z = grouping.l2_normalize(out['projection'])
  z = jnp.swapaxes(z.reshape(-1, num_crops, z.shape[-1]), 0, 1)
  index = jnp.where(batch['mask'], index, state.memory_bank.shape[1])
  bank = state.memory_bank.at[:, index].set(z, mode='drop')
  return state.replace(memory_bank=bank)


def regroup(state: TrainState, regrouping: jax.Array, *, num_iters: int,
            num_examples: int) -> TrainState:
  """k-means on the bank for every head, then target <- online.

  Only the first `num_examples` bank rows (the data set) are clustered.
  `regrouping` counts the regroupings (the epoch, at the reference's one an
  epoch).

  Head h clusters bank `(h + regrouping) mod n_large`: the banks alternate
  between heads and between regroupings. The k-means key is
  `random_streams.regroup_key(rng, regrouping, h)`, so a resumed run regroups
  exactly as an uninterrupted one.
  """
  num_heads, num_groups, _ = state.centroids.shape
  num_banks = state.memory_bank.shape[0]
  centroids = []
  for h in range(num_heads):
    bank = jax.lax.dynamic_index_in_dim(
        state.memory_bank, (h + regrouping) % num_banks, 0, keepdims=False)
    centroids.append(grouping.kmeans(bank, num_groups, num_iters,
                                     random_streams.regroup_key(
                                         state.rng, regrouping, h),
                                     num_valid=num_examples))
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


def jit_regroup(num_iters: int, num_examples: int, mesh: Mesh,
                state: TrainState
                ) -> Callable[[TrainState, jax.Array], TrainState]:
  shardings = state_sharding(state, mesh)
  return jax.jit(functools.partial(regroup, num_iters=num_iters,
                                   num_examples=num_examples),
                 in_shardings=(shardings, sharding_lib.replicated(mesh)),
                 out_shardings=shardings, donate_argnums=(0,))
