r"""Linear evaluation / kNN of a frozen backbone.

  python -m smog_jax.linear_eval --config configs/linear_eval.py:fashion_mnist \
      --config.pretrained=PRETRAIN_WORKDIR --workdir runs/linear_fmnist

`--config.mode` is 'linear' (full protocol), 'fast' (features once) or
'knn'; `--config.pretrained` is a pre-training workdir, an exported backbone,
'random' or 'pixels'. Multi-host: pass --coordinator_address, --num_processes
and --process_id, or nothing on a TPU pod or SLURM job (auto-detected). The
logic is in smog_jax.evaluation.runner.
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from smog_jax import console
from smog_jax import distributed
from smog_jax import startup


def define_flags() -> None:
  """Registers the flags (at run time, not import time)."""
  config_flags.DEFINE_config_file('config', None, 'Linear-eval config file.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Output directory.')
  distributed.define_flags()
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  startup.start_binary('linear_eval', f.workdir, multi_host=True,
                       quiet_imports=console.TENSORFLOW)
  # pylint: disable=g-import-not-at-top
  from smog_jax import validation
  from smog_jax.data import DataNotFoundError
  from smog_jax.evaluation import runner  # After distributed init.
  try:
    runner.run(f.config, f.workdir,
               config_name=console.config_name(f['config']))
  except (validation.ConfigError, DataNotFoundError) as e:
    # One sentence that names the problem and the fix; no traceback.
    raise SystemExit(f'smog_jax.linear_eval: {e}') from None


if __name__ == '__main__':
  define_flags()
  app.run(main)
