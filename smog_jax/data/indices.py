"""Which examples fill which batch rows: NumPy only, no TensorFlow.

The global batch of a step is decided here from `(seed, epoch)` alone, and
each process takes the rows `[row_start, row_stop)` its devices hold, so the
batch does not depend on the process count or on where a run restarted.
"""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np

from smog_jax import random_streams
from smog_jax.random_streams import Stream


def epoch_permutation(seed: int, stream: Stream, epoch: int, n: int
                      ) -> np.ndarray:
  """The example order of `epoch`: a permutation of `range(n)`."""
  return random_streams.numpy_rng(seed, stream, epoch).permutation(n)


_cached_permutation = functools.lru_cache(maxsize=2)(epoch_permutation)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full global batches per epoch (the rest of the epoch is dropped)."""
  return num_examples // batch_size


def check_rows(batch_size: int, row_start: int, row_stop: int) -> None:
  if not 0 <= row_start < row_stop <= batch_size:
    raise ValueError(f'Bad rows [{row_start}, {row_stop}) of a batch of '
                     f'{batch_size}.')


def train_indices(seed: int, num_examples: int, batch_size: int,
                  start_step: int, stop_step: int, row_start: int,
                  row_stop: int) -> Iterator[tuple[int, int, np.ndarray]]:
  """Yields `(step, epoch, example indices of the rows)`, steps in order."""
  check_rows(batch_size, row_start, row_stop)
  per_epoch = steps_per_epoch(num_examples, batch_size)
  if per_epoch == 0:
    raise ValueError(f'batch_size={batch_size} exceeds the {num_examples} '
                     'training examples: lower --config.batch_size.')
  for step in range(start_step, stop_step):
    epoch, position = divmod(step, per_epoch)
    order = _cached_permutation(seed, Stream.TRAIN, epoch, num_examples)
    first = position * batch_size
    yield step, epoch, order[first + row_start:first + row_stop]


def padded_indices(order: np.ndarray, batch_size: int, row_start: int,
                   row_stop: int
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """One pass over `order` in global batches, the last one padded.

  Yields:
    `(read, index, mask)` of the rows: `read` is the example to read (a
    real one, also on padding rows), `index` the example index the batch
    reports (`len(order)` on padding rows), `mask` whether the row is real:
    consumers go by the mask (in a padded memory bank, row N exists).
  """
  check_rows(batch_size, row_start, row_stop)
  n = len(order)
  for first in range(0, n, batch_size):
    position = first + np.arange(row_start, row_stop)
    mask = position < n
    read = order[position % n]
    yield read, np.where(mask, read, n), mask
