"""Input pipelines: training batches, memory-bank fill, evaluation passes.

The data flow (docs/architecture.md): a `sources.DataSource` read by example
index -> host crops (uint8, tf.data on the CPU) -> device augmentation
(smog_jax.augment, inside the jitted step) -> step. Iterators yield dicts of
global `jax.Array`s sharded on axis 0 over the mesh axis 'data'; each
process builds only its own rows, and the global batch does not depend on
the process count. TensorFlow is imported only when an iterator is built.

The fields of `config.data` and their defaults are in
`default_data_config`; a binary reads them once, with `config.batch_size`
and `config.seed`, into a `DataSettings` (`resolve(config)`) and passes that
to every function here.
"""

from __future__ import annotations

from typing import Iterator


from smog_jax import sharding
from smog_jax.data import indices
from smog_jax.data import sources
from smog_jax.data.folder import pin_listing as pin_folder_listing
from smog_jax.data.settings import DataSettings
from smog_jax.data.settings import default_data_config
from smog_jax.data.settings import resolve
from smog_jax.data.sources import DataNotFoundError

__all__ = [
    'DataNotFoundError', 'DataSettings', 'default_data_config',
    'make_bank_fill_iterator', 'make_eval_iterator', 'make_train_iterator',
    'num_train_examples', 'pin_folder_listing', 'resolve', 'steps_per_epoch',
]


def _pipeline():
  """The tf.data module, imported only when batches are built."""
  from smog_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline


def num_train_examples(settings: DataSettings) -> int:
  """Training examples used (after `config.data.train_slice`)."""
  return sources.num_examples(settings, sources.train_split(settings))


def steps_per_epoch(settings: DataSettings) -> int:
  """Full global batches per epoch (the partial last one is dropped)."""
  return indices.steps_per_epoch(num_train_examples(settings),
                                 settings.batch_size)


def _iterate(s: DataSettings, mesh, split, build,
             evaluation=False) -> Iterator[dict]:
  source = sources.open_source(s, split(s))
  if evaluation:
    rows = sharding.process_rows(mesh, s.eval_batch_size,
                                 'data.eval_batch_size')
  else:
    rows = sharding.process_rows(mesh, s.batch_size)
  local = build(s, source, *rows).as_numpy_iterator()
  return _pipeline().global_batches(local, mesh, s.prefetch)


def make_train_iterator(settings: DataSettings, mesh,
                        start_step: int, stop_step: int) -> Iterator[dict]:
  """The training batches of steps `start_step, ..., stop_step - 1`.

  Args:
    settings: the run's data settings.
    mesh: 1-D mesh with axis 'data'.
    start_step: global step of the first batch (for resumption).
    stop_step: the step after the last batch (the run's total steps).

  Returns:
    An iterator of `stop_step - start_step` dicts online_large
    u8[B,nL,S,S,C_src], online_small u8[B,nS,s,s,C_src], target_large
    u8[B,nL,S,S,C_src], index i32[B], epoch i32[B], label i32[B];
    `smog_jax.augment.train_views` makes the float views.
  """
  build = lambda s, source, *rows: _pipeline().build_train_dataset(
      s, source, start_step, stop_step, *rows)
  return _iterate(settings, mesh, sources.train_split, build)


def make_bank_fill_iterator(settings: DataSettings, mesh) -> Iterator[dict]:
  """One pass over the training split in index order, to fill the bank.

  Returns:
    ceil(N / B) dicts large u8[B,nL,S,S,C_src] (pipeline A's crops, to be
    augmented on the device), index i32[B], mask bool[B], label i32[B].
    Padding rows have mask False and index N (a JAX scatter drops them).
  """
  return _iterate(settings, mesh, sources.train_split,
                  _pipeline().build_bank_fill_dataset)


def make_eval_iterator(settings: DataSettings, mesh,
                       split: str | None = None, mode: str = 'test',
                       epoch: int = 0) -> Iterator[dict]:
  """One pass over an evaluation split; every example once (mask).

  Args:
    settings: the run's data settings; the global batch is their
      `eval_batch_size`.
    mesh: 1-D mesh with axis 'data'.
    split: tfds split (default `settings.eval_split`).
    mode: 'test' (centre crop) or 'linear_train' (random resized crop and
      flip, order and crops keyed by `epoch`).
    epoch: epoch of 'linear_train'.

  Returns:
    Dicts image u8[B,S,S,C_src], label i32[B], index i32[B], mask bool[B];
    `smog_jax.augment.eval_views` normalises the crops on the device.
  """
  build = lambda s, source, *rows: _pipeline().build_eval_dataset(
      s, source, mode, *rows, epoch=epoch)
  return _iterate(settings, mesh, lambda s: split or s.eval_split, build,
                  evaluation=True)
