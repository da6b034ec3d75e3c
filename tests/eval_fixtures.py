"""Shared by the evaluation and export tests: the `:tiny` pre-training
config on the committed Fashion-MNIST fixture, and a saved pre-training run.
"""

import os

import jax
import numpy as np
import optax

from smog_jax import checkpointing
from smog_jax import recipes
from smog_jax import models
from smog_jax import train_state as train_state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, 'tests', 'data', 'fashion_mnist')


def load_config(name: str, variant: str):
  """`configs/<name>.py:<variant>`."""
  return recipes.load_config(os.path.join(ROOT, 'configs', f'{name}.py'),
                             variant)


def use_fixture(config, data_dir: str):
  """Points `config.data` at the fixture (64 examples per split)."""
  config.data.data_dir = data_dir
  config.data.fashion_mnist_idx_dir = FIXTURE
  config.data.download = False
  return config


def write_pretraining_workdir(workdir: str, config, step: int = 7,
                              memory_bank_rows: int | None = None,
                              saved_config=None):
  """Saves a random SMoG TrainState of `config` as pre-training does.

  The BN running statistics are random too, so that a loader that dropped
  or mixed them up would change the features. `memory_bank_rows`: rows of
  the (zero) memory bank, None for none; `saved_config`: the config to
  save with it (e.g. as an earlier version wrote it), None for `config`.

  Returns:
    The saved state (host arrays).
  """
  network = models.build_network(config.model)
  d = config.data
  state = jax.jit(lambda rng: train_state_lib.create_train_state(
      rng, network, optax.sgd(0.1), (d.image_size, d.image_size, d.channels),
      config.smog.num_heads, config.smog.num_groups,
      memory_bank_rows))(jax.random.key(0))
  rng = np.random.default_rng(0)
  stats = jax.tree.map_with_path(
      lambda path, x: (rng.uniform(0.5, 1.5, x.shape) if path[-1].key == 'var'
                       else 0.1 * rng.normal(size=x.shape)).astype(np.float32),
      jax.device_get(state.batch_stats))
  state = state.replace(step=np.asarray(step, np.int32), batch_stats=stats)
  with checkpointing.make_manager(workdir, async_save=False) as manager:
    checkpointing.save(manager, state, saved_config or config, force=True)
    manager.wait_until_finished()
  return jax.device_get(state)
