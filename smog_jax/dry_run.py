"""Compile the training programs of a config without data or devices' memory.

The train step, the bank fill and the regrouping are lowered from abstract
shapes (`jax.ShapeDtypeStruct`s with their shardings) for a given number of
training examples, so a recipe can be checked, and its per-device memory
read from XLA's memory analysis, on any mesh, e.g. 8 fake CPU devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from smog_jax import data as data_lib
from smog_jax import memory_bank
from smog_jax import sharding as sharding_lib
from smog_jax import train
from smog_jax import trainer


def abstract_batches(config: ml_collections.ConfigDict, mesh: Mesh
                     ) -> dict[str, dict[str, jax.ShapeDtypeStruct]]:
  """The train and bank-fill batches of `config`, as sharded abstract shapes."""
  d, b = config.data, config.batch_size
  sharded = sharding_lib.data_sharded(mesh)

  def images(crops, size):  # The host's uint8 crops.
    return jax.ShapeDtypeStruct((b, crops, size, size, d.channels),
                                jnp.uint8, sharding=sharded)

  ints = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=sharded)
  large = images(d.num_large_crops, d.large_crop_size)
  train_batch = dict(online_large=large,
                     online_small=images(d.num_small_crops,
                                         d.small_image_size),
                     target_large=large, index=ints, epoch=ints, label=ints)
  fill_batch = dict(large=large, index=ints, label=ints,
                    mask=jax.ShapeDtypeStruct((b,), jnp.bool_,
                                              sharding=sharded))
  return dict(train=train_batch, fill=fill_batch)


def lower(config: ml_collections.ConfigDict, mesh: Mesh, num_examples: int,
          programs: tuple[str, ...] = ('train_step', 'fill_bank', 'regroup')
          ) -> dict[str, jax.stages.Lowered]:
  """The lowered `programs` of `config` for `num_examples` training examples.

  Args:
    config: a pre-training config.
    mesh: the 1-D `data` mesh to compile for.
    num_examples: N, the training set size (the memory bank's rows).
    programs: which of 'train_step', 'fill_bank', 'regroup' to lower.

  Returns:
    `{program: jax.stages.Lowered}`; `.compile()` one to compile it.
  """
  sharding_lib.check_divisible(config.batch_size, mesh)
  plan = trainer.Plan.of(config, num_examples)
  network, tx, step_config, state = trainer.build(
      config, data_lib.resolve(config), mesh, plan, materialize=False)
  batches = abstract_batches(config, mesh)
  lowered = {}
  if 'train_step' in programs:
    lowered['train_step'] = train.jit_train_step(
        network, tx, step_config, mesh, state).lower(state, batches['train'])
  if 'fill_bank' in programs:
    lowered['fill_bank'] = memory_bank.jit_fill_bank_step(
        network, step_config.augment, mesh, state).lower(state,
                                                          batches['fill'])
  if 'regroup' in programs:
    regrouping = jax.ShapeDtypeStruct((), jnp.int32,
                                      sharding=sharding_lib.replicated(mesh))
    lowered['regroup'] = memory_bank.jit_regroup(
        config.smog.kmeans_iters, num_examples, mesh, state).lower(state,
                                                                   regrouping)
  return lowered
