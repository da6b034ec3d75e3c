"""The suite writes only into its temporary folders, and a prepared dataset
that its source files contradict is refused, never trained on."""

import gzip
import os
import subprocess
import sys

import conftest
import cli_runs
import numpy as np
import pytest

from smog_jax.data import sources

_WHERE_TFDS_WRITES = """
import tensorflow_datasets as tfds
print(tfds.builder('fashion_mnist').data_dir)
"""


def test_processes_started_by_tests_write_into_the_sandbox():
  env = cli_runs.environment()
  for name in ('HOME', 'TFDS_DATA_DIR', 'XDG_CACHE_HOME', 'MPLCONFIGDIR'):
    assert env[name].startswith(conftest.SANDBOX + os.sep), name
  data_dir = subprocess.run(
      [sys.executable, '-c', _WHERE_TFDS_WRITES], env=env, check=True,
      capture_output=True, text=True, timeout=120).stdout.strip()
  assert data_dir.startswith(conftest.SANDBOX + os.sep), data_dir
  assert not data_dir.startswith(conftest.REAL_HOME + os.sep)


def _write_idx(path, shape):
  """An unsigned-byte IDX file of zeros with `shape`."""
  header = (0x0800 + len(shape)).to_bytes(4, 'big') + b''.join(
      n.to_bytes(4, 'big') for n in shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + np.zeros(shape, np.uint8).tobytes())


def _settings(data_dir, idx_dir):
  return sources.Location('fashion_mnist', data_dir, idx_dir, False)


def test_a_prepared_copy_the_idx_files_contradict_is_refused(
    tmp_path, fixture_data_dir):
  # The fixture's 64/64-image copy, then IDX files that hold 80 / 64.
  sources.get_builder(_settings(fixture_data_dir, cli_runs.FIXTURE))
  other = tmp_path / 'idx'
  other.mkdir()
  for split, count in (('train', 80), ('t10k', 64)):
    _write_idx(other / f'{split}-images-idx3-ubyte.gz', (count, 28, 28))
    _write_idx(other / f'{split}-labels-idx1-ubyte.gz', (count,))
  with pytest.raises(sources.DataNotFoundError) as refused:
    sources.get_builder(_settings(fixture_data_dir, str(other)))
  message = str(refused.value)
  assert 'holds 64 train images but the IDX files in' in message
  assert str(other) in message and 'hold 80' in message
  assert os.path.join(fixture_data_dir, 'fashion_mnist') in message
  # The copy that agrees with its files is read as before.
  builder = sources.get_builder(_settings(fixture_data_dir, cli_runs.FIXTURE))
  assert builder.info.splits['train'].num_examples == 64
