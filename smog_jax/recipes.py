"""What every pre-training config shares, and what a resumed run may change.

A recipe (`configs/*.py`) starts from `pretraining_config(dataset)`, the
reference's top-level and `smog` values, and overrides only what differs,
so every pre-training config has the same fields. Each top-level default
is declared with what a resumed run may do with it (`checkpointing`
compares a resumed config with the saved one):
  fixed:        must equal the saved run's;
  changeable:   may differ with `--config.allow_config_change=True` (they
                change the schedules' length or the kNN monitor, not the
                state);
  operational:  may always differ (they never change what a run computes).
`load_config` reads a config file as `--config` does, without importing the
trainer.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from smog_jax.data import settings as data_settings

_FIXED = dict(
    seed=0,
    batch_size=4096,
)
_CHANGEABLE = dict(
    num_epochs=400,
    # > 0 overrides the epoch-based length (--config.total_steps=N).
    total_steps=-1,
    knn_k=20,
    knn_temperature=0.07,
)
_OPERATIONAL = dict(
    log_every_steps=100,
    # A progress line on the terminal (smog_jax.console); also logged.
    progress_every_steps=1000,
    checkpoint_every_steps=1000,
    keep_checkpoints=3,
    # Online weighted kNN monitor on the evaluation split every N epochs
    # (0: only at the end; -1: never).
    knn_every_epochs=50,
    # True lets a resumed run change the changeable fields.
    allow_config_change=False,
)
CHANGEABLE_FIELDS = frozenset(_CHANGEABLE)
OPERATIONAL_FIELDS = frozenset(_OPERATIONAL) | frozenset(
    f'data.{name}' for name in data_settings.OPERATIONAL_FIELDS)


def pretraining_config(dataset: str) -> ml_collections.ConfigDict:
  """The shared defaults of a pre-training config on `dataset`.

  Args:
    dataset: one of `smog_jax.data.settings.DATASETS`.

  Returns:
    Every top-level field, `data` (`default_data_config(dataset)`) and the
    reference's `smog` block; the recipe adds `model` and `optimizer`.
  """
  config = ml_collections.ConfigDict({**_FIXED, **_CHANGEABLE,
                                      **_OPERATIONAL})
  config.data = data_settings.default_data_config(dataset)
  # The reference's grouping (spec table): 3 heads x 3000 groups, tau 0.1,
  # group momentum 1.0 -> 0.99, target EMA 0.999, regrouping once an epoch
  # by 10 k-means iterations, centroids detached in the loss.
  config.smog = ml_collections.ConfigDict(dict(
      num_heads=3, num_groups=3000, temperature=0.1,
      group_momentum_start=1.0, group_momentum_end=0.99,
      ema_momentum=0.999, ema_schedule='constant',
      kmeans_iters=10, regroups_per_epoch=1, centroid_gradient=False))
  return config


def load_config(path: str, variant: str | None = None
                ) -> ml_collections.ConfigDict:
  """`get_config(variant)` of the config file at `path` (None: no argument)."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if variant is None else module.get_config(
      variant)
