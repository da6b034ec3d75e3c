r"""SMoG pre-training binary.

  python -m smog_jax.main --config configs/fashion_mnist.py --workdir runs/fmnist
  python -m smog_jax.main --config configs/fashion_mnist.py:tiny \
      --config.total_steps=8 --workdir /tmp/smog_tiny

Resumes automatically from the newest checkpoint in --workdir. Multi-host:
--coordinator_address/--num_processes/--process_id, or nothing on a TPU pod or
a SLURM job (auto-detected). The loop lives in `smog_jax.trainer`.
"""

from __future__ import annotations

from typing import Sequence

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from smog_jax import console
from smog_jax import distributed
from smog_jax import startup


def define_flags() -> None:
  """Registers the flags (at run time, not import time)."""
  config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Checkpoints and metrics go here.')
  distributed.define_flags()
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  startup.start_binary('main', f.workdir, multi_host=True,
                       quiet_imports=console.TENSORFLOW)
  # pylint: disable=g-import-not-at-top
  from smog_jax import checkpointing, trainer, validation
  from smog_jax.data import DataNotFoundError
  try:
    trainer.train_and_evaluate(f.config, f.workdir,
                               console.config_name(f['config']))
  except (validation.ConfigError, DataNotFoundError,
          checkpointing.CheckpointError, trainer.NonFiniteError) as e:
    # One sentence that names the problem and the fix; no traceback.
    raise SystemExit(f'smog_jax.main: {e}') from None
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    distributed.exit_lost_process(str(e).splitlines()[0])


if __name__ == '__main__':
  define_flags()
  app.run(main)
