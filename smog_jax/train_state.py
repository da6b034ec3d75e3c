"""The explicit SMoG train state: everything a resumed run needs.

One `flax.struct.dataclass` pytree, checkpointed as a whole. The optimiser
(`optax.GradientTransformation`) and the network (`flax.linen.Module`) are not
in it: they are rebuilt from the config, so the state is pure data.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from smog_jax import grouping
from smog_jax import sharding as sharding_lib
from smog_jax.models.heads import SMoGNetwork

# The target network is the online one without the predictor.
TARGET_MODULES = ('backbone', 'projector')


@flax.struct.dataclass
class TrainState:
  """SMoG training state.

  Attributes:
    step: int32 scalar, number of optimiser steps taken (also the data
      position: the batch of step s is a function of (seed, s)).
    params: online parameters {'backbone', 'projector', 'predictor'}.
    batch_stats: online BN running statistics.
    target_params: EMA target parameters {'backbone', 'projector'}.
    target_batch_stats: target BN running statistics.
    opt_state: optimiser state of the online parameters.
    centroids: `[H, K, D]` unit-norm group features, one set per head.
    rng: base PRNG key of the dropout and k-means keys
      (`random_streams.dropout_key`, `regroup_key`).
    memory_bank: `[n_large, N_pad, D]` online projections of the large crops
      of every training example (row = example index; rows from N on pad the
      bank to a multiple of the device count), or None before the
      pre-training loop allocates it.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  target_params: Any
  target_batch_stats: Any
  opt_state: optax.OptState
  centroids: jax.Array
  rng: jax.Array
  memory_bank: jax.Array | None = None


def target_subtree(tree: Any) -> Any:
  """The backbone and projector entries of an online params/stats tree."""
  return {name: tree[name] for name in TARGET_MODULES if name in tree}


def target_copy(tree: Any) -> Any:
  """A copy (own buffers, so donation stays legal) of `target_subtree`."""
  return jax.tree.map(jnp.copy, target_subtree(tree))


def random_centroids(rng: jax.Array, num_heads: int, num_groups: int,
                     dim: int) -> jax.Array:
  """`[H, K, D]` random unit vectors: a placeholder until the first k-means."""
  return grouping.l2_normalize(
      jax.random.normal(rng, (num_heads, num_groups, dim), jnp.float32))


def create_train_state(
    rng: jax.Array,
    network: SMoGNetwork,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, int, int],
    num_heads: int,
    num_groups: int,
    memory_bank_rows: int | None = None,
    num_large_crops: int = 2,
) -> TrainState:
  """Initialises online and target networks, optimiser and centroids.

  The target starts as an exact copy of the online backbone and projector.

  Args:
    rng: PRNG key.
    network: the SMoG network.
    tx: optimiser.
    image_shape: (H, W, C) of a large crop.
    num_heads: H.
    num_groups: K.
    memory_bank_rows: rows of the zero memory bank to allocate: the number
      of training examples, padded to a multiple of the device count
      (`memory_bank.padded_rows`); None for no bank.
    num_large_crops: banks (one per large crop).

  Returns:
    The initial state at step 0.
  """
  init_rng, centroid_rng, state_rng = jax.random.split(rng, 3)
  variables = network.init(init_rng, jnp.zeros((1,) + tuple(image_shape)),
                           train=False, with_predictor=True)
  params, batch_stats = variables['params'], variables['batch_stats']
  dim = network.projector.output_dim
  bank = None
  if memory_bank_rows is not None:
    bank = jnp.zeros((num_large_crops, memory_bank_rows, dim), jnp.float32)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      target_params=target_copy(params),
      target_batch_stats=target_copy(batch_stats),
      opt_state=tx.init(params),
      centroids=random_centroids(centroid_rng, num_heads, num_groups, dim),
      rng=state_rng,
      memory_bank=bank,
  )


def state_sharding(state: TrainState, mesh: Mesh) -> TrainState:
  """Replicated everywhere except the memory bank, split over examples."""
  replicated = sharding_lib.replicated(mesh)
  shardings = jax.tree.map(lambda _: replicated, state)
  if state.memory_bank is not None:
    shardings = shardings.replace(
        memory_bank=sharding_lib.data_sharded(mesh, axis=1))
  return shardings
