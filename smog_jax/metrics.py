"""The one metrics writer of both binaries.

Every record goes to the log and, on process 0, is appended to
WORKDIR/metrics.jsonl (`jsonl.JsonlWriter`, so gs:// works); pre-training
also writes its scalars to TensorBoard through clu.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
from absl import logging
from clu import metric_writers

from smog_jax import jsonl


class MetricsWriter:
  """Writes records: `writer({'step': s, 'loss': ...})`."""

  def __init__(self, workdir: str, resume_step: int | None = None,
               tensorboard: bool = False):
    """Opens WORKDIR/metrics.jsonl (process 0) and the log.

    Args:
      workdir: the run's folder.
      resume_step: a resumed run's step: records of later steps (logged
        after its checkpoint, about to be logged again) are dropped first;
        None keeps every record (an evaluation appends to its history).
      tensorboard: records are numbers with a `step`, also written to
        TensorBoard (clu's writer, which logs them too).
    """
    path = os.path.join(workdir, jsonl.METRICS_FILE)
    lead = jax.process_index() == 0
    self._jsonl = jsonl.JsonlWriter(path, resume_step) if lead else None
    self._clu = None
    if tensorboard:
      self._clu = (metric_writers.create_default_writer(
          workdir, asynchronous=False) if lead else
                   metric_writers.create_default_writer(just_logging=True))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    if self._clu is not None:
      self._clu.write_hparams(hparams)

  def __call__(self, record: Mapping[str, Any]) -> None:
    if self._clu is not None:
      self._clu.write_scalars(int(record['step']), {
          k: v for k, v in record.items() if k != 'step'})
    else:
      logging.info('%s', ' '.join(f'{k}={v}' for k, v in record.items()))
    if self._jsonl is not None:
      self._jsonl.write(record)

  def close(self) -> None:
    if self._clu is not None:
      self._clu.flush()
      self._clu.close()
