"""The one append-only JSON-lines writer of both binaries (metrics.jsonl).

Written through `tf.io.gfile`, so a `gs://` workdir works as a local one (on
GCS each append rewrites the object: fine for a record every few steps). Every
record is a JSON object with a `step`; a resumed run first drops the records
past the step it resumes from, so each step is in the file once.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np


def _gfile():
  """`tf.io.gfile`, imported on first use.

  TensorFlow prints as it loads; the binaries import it once their log file
  is set up (`smog_jax.console.setup`).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


# The metrics file of a workdir (pre-training and evaluation alike).
METRICS_FILE = 'metrics.jsonl'


def jsonable(value: Any) -> Any:
  """A numpy scalar or 0-d array as the Python number JSON can write."""
  return value.item() if isinstance(value, (np.generic, np.ndarray)) else value


class JsonlWriter:
  """Appends one JSON object per `write` to `path`."""

  def __init__(self, path: str, resume_step: int | None = None):
    """Opens `path` (its folder is created).

    Args:
      path: the file; any `tf.io.gfile` path (local, gs://, ram://).
      resume_step: when resuming from this step, records of later steps
        (logged after the last checkpoint, about to be logged again) are
        dropped first; None keeps every record.
    """
    self.path = os.fspath(path)
    _gfile().makedirs(os.path.dirname(self.path) or '.')
    if resume_step is not None and _gfile().exists(self.path):
      with _gfile().GFile(self.path) as f:
        kept = [line for line in f if line.strip() and
                json.loads(line).get('step', 0) <= resume_step]
      # Written aside, then renamed over the file: a crash in between leaves
      # the old file whole.
      with _gfile().GFile(self.path + '.tmp', 'w') as f:
        f.write(''.join(kept))
      _gfile().rename(self.path + '.tmp', self.path, overwrite=True)

  def write(self, record: Mapping[str, Any]) -> None:
    line = json.dumps({k: jsonable(v) for k, v in record.items()})
    with _gfile().GFile(self.path, 'a') as f:
      f.write(line + '\n')

  def read(self) -> list[dict[str, Any]]:
    """Every record in the file."""
    return read(self.path)


def read(path: str) -> list[dict[str, Any]]:
  """Every record of the JSON-lines file at `path` ([] if there is none)."""
  if not _gfile().exists(path):
    return []
  with _gfile().GFile(path) as f:
    return [json.loads(line) for line in f if line.strip()]
