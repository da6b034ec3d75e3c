r"""Prepare a folder of images for pre-training, ahead of its first run.

  python -m smog_jax.prepare --folder DIR --data_dir DATA_DIR \
      [--short_side 320] [--workers N]

Writes what `--config.data.dataset=folder --config.data.folder=DIR
--config.data.data_dir=DATA_DIR` would prepare on first use (without
--data_dir: tfds's default, ~/tensorflow_datasets), and lists the files it
skipped; an unchanged folder is not prepared again. The format, the pixel
rules and what is skipped: smog_jax/data/folder.py.
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags

from smog_jax import console
from smog_jax import startup


def define_flags() -> None:
  """Registers the binary's flags (at run time, not import time)."""
  flags.DEFINE_string('folder', None, 'The folder of images.')
  flags.DEFINE_string('data_dir', None, 'tfds data dir to prepare into '
                      "(config.data.data_dir; default: tfds's).")
  flags.DEFINE_integer('short_side', None, 'Shrink images whose short side '
                       'exceeds this (config.data.folder_short_side).')
  flags.DEFINE_integer('workers', None, 'Preparing processes (default: one '
                       'per core).')
  flags.mark_flags_as_required(['folder'])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  startup.start_binary('prepare', None, multi_host=False)
  from smog_jax.data import folder  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  try:
    out = folder.prepare(f.folder, f.data_dir, f.short_side,
                         workers=f.workers)
  except folder.FolderError as e:
    raise SystemExit(f'smog_jax.prepare: {e}') from None
  console.show('Ready: %s', out)


if __name__ == '__main__':
  define_flags()
  app.run(main)
