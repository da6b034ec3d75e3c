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
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from etils import epath

from smog_jax import models
from smog_jax import recipes
from smog_jax.data import folder as data_folder
from smog_jax.data import settings as data_settings

CHECKPOINT_SUBDIR = 'checkpoints'


class CheckpointError(RuntimeError):
  """The workdir's checkpoints cannot be resumed; the message says why."""


def absolute(path: str) -> str:
  """A local path made absolute (orbax refuses relative ones); URLs as given."""
  path = os.fspath(path)
  return path if '://' in path else os.path.abspath(path)


def checkpoint_dir(workdir: str) -> str:
  """`WORKDIR/checkpoints`, absolute."""
  return os.path.join(absolute(workdir), CHECKPOINT_SUBDIR)


def make_manager(workdir: str, max_to_keep: int = 3,
                 async_save: bool = True,
                 item_names: tuple[str, ...] = ('state', 'config')
                 ) -> ocp.CheckpointManager:
  """The CheckpointManager of `item_names` under `WORKDIR/checkpoints`."""
  # cleanup_tmp_directories: a kill during an asynchronous write leaves its
  # temporary folder behind; the next run removes it.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True,
      enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
  manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                  item_names=item_names)
  # That removal runs in a thread, which orbax (the pinned 0.12.8) awaits only
  # before a save: a run that stops first (a refused config) would exit under
  # it, and the interpreter's shutdown breaks it with a traceback. Orbax has
  # no public way to await it; a version without this method is not waited.
  await_cleanup = getattr(manager, '_maybe_await_cleanup_tmp_directory', None)
  if await_cleanup is not None:
    await_cleanup()
  return manager


def save(manager: ocp.CheckpointManager, state: Any,
         config: ml_collections.ConfigDict, force: bool = False) -> bool:
  """Saves `state` at its own step (asynchronously if the manager is)."""
  step = int(jax.device_get(state.step))
  return manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                              config=ocp.args.JsonSave(config.to_dict())),
      force=force)


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """`{'a': {'b': 1}}` -> `{'a.b': 1}` (tuples as lists, as JSON has them)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return out


def check_resumable_config(saved: Mapping[str, Any],
                           config: ml_collections.ConfigDict,
                           directory: str) -> None:
  """Raises `CheckpointError` if `config` may not resume a `saved` run.

  `recipes.OPERATIONAL_FIELDS` may always differ, `recipes.CHANGEABLE_FIELDS`
  only with `config.allow_config_change`; every other difference is refused.
  """
  old, new = flatten(saved), flatten(config.to_dict())
  changeable, operational = (recipes.CHANGEABLE_FIELDS,
                             recipes.OPERATIONAL_FIELDS)
  differing = sorted(k for k in old.keys() | new.keys()
                     if k not in operational and old.get(k) != new.get(k))
  refused = [k for k in differing
             if k not in changeable or not config.allow_config_change]
  if not refused:
    for key in differing:
      logging.warning('Resuming with config.%s changed: %r -> %r.', key,
                      old.get(key), new.get(key))
    return
  changes = '; '.join(_change(k, old.get(k), new.get(k), config)
                      for k in refused)
  hint = (' (these may change with --config.allow_config_change=True)'
          if set(refused) <= changeable else
          '; use a new --workdir for a different run')
  raise CheckpointError(f'The checkpoints in {directory} were written with '
                        f'another config ({changes}){hint}.')


def _change(key: str, old: Any, new: Any,
            config: ml_collections.ConfigDict) -> str:
  """`key: old -> new`; for a folder's listing, which files differ."""
  if key == 'data.folder_listing' and old and new:
    return (f'{key}: {old!r} -> {new!r}, '
            + data_folder.listing_change(config.data.data_dir, old, new))
  return f'{key}: {old!r} -> {new!r}'


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   config: ml_collections.ConfigDict) -> Any:
  """The newest readable checkpoint on `abstract_state`'s shardings, or None.

  `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with the shardings of
  *this* run, so a checkpoint written on 8 devices restores on 1 and back. An
  unreadable newest checkpoint (truncated, corrupted) is skipped with a warning
  naming it, for the previous one, and set aside as `<step>.unreadable`; the
  saved config must allow resuming with `config` (`check_resumable_config`).

  Returns:
    The restored state, or None when the workdir has no checkpoint.

  Raises:
    CheckpointError: checkpoints exist but none is readable, or the config
      changed in a way the run cannot resume.
  """
  directory = os.fspath(manager.directory)
  steps = sorted(manager.all_steps(), reverse=True)
  unreadable = []
  for step in steps:
    try:
      saved = _restore_config(manager, step)
      check_resumable_config(saved.to_dict(), config, directory)
      state = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))['state']
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Checkpoint %d in %s is unreadable (%s); trying the '
                      'previous one.', step, directory, e)
      unreadable.append(step)
      continue
    _set_aside(manager, unreadable)
    return state
  if steps:
    raise CheckpointError(
        f'No readable checkpoint among steps {sorted(steps)} in {directory}: '
        'move them away to start afresh, or restore the workdir from a copy.')
  return None


def _restore_config(manager: ocp.CheckpointManager, step: int
                    ) -> ml_collections.ConfigDict:
  """The config saved with checkpoint `step`, brought to today's fields.

  Every reader of a saved config comes through here, so a run written by an
  earlier version resumes, evaluates, exports and reports as it trained.
  """
  saved = manager.restore(step, args=ocp.args.Composite(
      config=ocp.args.JsonRestore()))['config']
  config = ml_collections.ConfigDict(saved)
  if 'data' in config:
    data_settings.upgrade_saved(config.data)
  if 'model' in config:
    models.upgrade_saved(config.model)
  return config


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Renames unreadable checkpoints to `<step>.unreadable` (kept to inspect),
  so the resumed run can save those steps again."""
  if steps and jax.process_index() == 0:
    for step in steps:
      path = epath.Path(manager.directory) / str(step)
      path.rename(path.parent / f'{step}.unreadable')
  if steps:
    multihost_utils.sync_global_devices('smog_jax: unreadable set aside')
    manager.reload()


def abstract_like(state: Any, shardings: Any) -> Any:
  """`ShapeDtypeStruct`s of `state` carrying the target `shardings` (a
  pytree like `state`, or one sharding for every leaf)."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, state)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, shardings)


def load_host_state(path: str, step: int | None = None
                    ) -> tuple[ml_collections.ConfigDict, dict[str, Any], int]:
  """A checkpoint of a pre-training workdir as plain host arrays.

  Restores without knowing the optimiser or the device count of the run.

  Args:
    path: a pre-training workdir (holding `checkpoints/`).
    step: the checkpoint's step; None for the newest.

  Returns:
    `(config, state, step)`: the pre-training config, the `TrainState` as a
    nested dict of numpy arrays, and the step.

  Raises:
    FileNotFoundError: when `path` holds no (such) checkpoint.
  """
  directory = checkpoint_dir(path)
  if not epath.Path(directory).is_dir():
    raise FileNotFoundError(
        f'No pre-training checkpoints under {directory!r}: pass the --workdir '
        'of a smog_jax.main run (or an exported backbone directory).')
  with ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(
          read_only=True, save_interval_steps=0, create=False),
      item_names=('state', 'config')) as manager:
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
      raise FileNotFoundError(f'{directory!r} holds no finished checkpoint'
                              + ('' if step is None else f' of step {step}')
                              + '.')
    config = _restore_config(manager, step)
    state_dir = os.path.join(directory, str(step), 'state')
    tree = ocp.PyTreeCheckpointer().restore(
        state_dir, args=ocp.args.PyTreeRestore(
            restore_args=_host_restore_args(state_dir)))
  return config, tree, int(step)


def load_pretrained(path: str) -> tuple[ml_collections.ConfigDict,
                                        dict[str, Any], int]:
  """The online backbone of the newest checkpoint in a pre-training workdir.

  Returns:
    `(config, variables, step)`: the pre-training config, the online
    backbone's `{'params', 'batch_stats'}` as host arrays, and the step.
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
