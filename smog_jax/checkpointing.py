"""Orbax checkpoints of the whole train state, and loading them back.

Layout: `WORKDIR/checkpoints/<step>/{state,config}`. `state` is the complete
`TrainState` pytree (online and target networks, BN statistics, optimiser
state, centroids, rng, memory bank; the step is also the data position);
`config` is the pre-training config as JSON, so evaluation and export can
rebuild the architecture without the original config file.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a crash mid-save never corrupts the last good checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = 'checkpoints'


def absolute(path: str) -> str:
  """A local path made absolute (orbax refuses relative ones); URLs as given."""
  path = os.fspath(path)
  return path if '://' in path else os.path.abspath(path)


def checkpoint_dir(workdir: str) -> str:
  """`WORKDIR/checkpoints`, absolute."""
  return os.path.join(absolute(workdir), CHECKPOINT_SUBDIR)


def make_manager(workdir: str, max_to_keep: int = 3,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager for `state` + `config` under `WORKDIR/checkpoints`."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=('state', 'config'))


def save(manager: ocp.CheckpointManager, state: Any,
         config: ml_collections.ConfigDict, force: bool = False) -> bool:
  """Saves `state` at its own step (asynchronously if the manager is)."""
  step = int(jax.device_get(state.step))
  return manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                              config=ocp.args.JsonSave(config.to_dict())),
      force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> Any:
  """The newest checkpoint restored onto `abstract_state`'s shardings, or None.

  `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with the shardings of
  *this* run, so a checkpoint written on 8 devices restores on 1 and back.
  """
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(
      step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
  return restored['state']


def abstract_like(state: Any, shardings: Any) -> Any:
  """`ShapeDtypeStruct`s of `state` carrying the target `shardings`."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, shardings)


def load_host_state(path: str) -> tuple[ml_collections.ConfigDict,
                                         dict[str, Any], int]:
  """The newest checkpoint of a pre-training workdir, as host arrays.

  Args:
    path: a pre-training workdir (holding `checkpoints/`).

  Returns:
    `(config, tree, step)`: the pre-training config, the whole `TrainState`
    as a nested dict of numpy arrays (`tree['params']['backbone']`,
    `tree['memory_bank']`, `tree['centroids']`, ...), and the step.

  Raises:
    FileNotFoundError: when `path` holds no checkpoint.
  """
  directory = checkpoint_dir(path)
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f'No pre-training checkpoints under {directory!r}: pass the --workdir '
        'of a smog_jax.main run (or an exported backbone directory).')
  with ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_names=('state', 'config')) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'{directory!r} holds no finished checkpoint.')
    # Plain host arrays: no knowledge of the optimiser (or device count) of
    # the pre-training run is required.
    config = manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']
    state_dir = os.path.join(directory, str(step), 'state')
    tree = ocp.PyTreeCheckpointer().restore(
        state_dir, args=ocp.args.PyTreeRestore(
            restore_args=_host_restore_args(state_dir)))
  return ml_collections.ConfigDict(config), tree, int(step)


def load_pretrained(path: str) -> tuple[ml_collections.ConfigDict,
                                        dict[str, Any], int]:
  """The online backbone of the newest checkpoint in a pre-training workdir.

  Args:
    path: a pre-training workdir (holding `checkpoints/`).

  Returns:
    `(config, variables, step)`: the pre-training config, the online
    backbone's `{'params', 'batch_stats'}` as host arrays, and the step.

  Raises:
    FileNotFoundError: when `path` holds no checkpoint.
  """
  config, tree, step = load_host_state(path)
  variables = {'params': tree['params']['backbone'],
               'batch_stats': tree['batch_stats']['backbone']}
  return config, variables, step


def _host_restore_args(state_dir: str) -> Any:
  """RestoreArgs that load every array as numpy on the host."""
  metadata = ocp.PyTreeCheckpointer().metadata(state_dir)
  tree = getattr(metadata, 'item_metadata', metadata)
  tree = getattr(tree, 'tree', tree)
  return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
