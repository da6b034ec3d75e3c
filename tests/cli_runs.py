"""`python -m smog_jax.main` started as a user starts it, for tests of how
it starts and how it stops on bad input."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, 'tests', 'data', 'fashion_mnist')


def environment(**overrides) -> dict[str, str]:
  """This environment on the CPU, without malloc settings, plus `overrides`."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith('MALLOC_') and k != 'GLIBC_TUNABLES'}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3',
             **overrides)
  return env


def run_main(tmp_path, *flags: str,
             **env_overrides: str) -> subprocess.CompletedProcess:
  """`python -m smog_jax.main` on the `:tiny` config with `flags`, finished.

  The workdir is `tmp_path/run`; stdout and stderr are captured as text.
  """
  return subprocess.run(
      [sys.executable, '-m', 'smog_jax.main', '--config',
       os.path.join(REPO, 'configs', 'fashion_mnist.py:tiny'),
       '--workdir', str(tmp_path / 'run'), *flags],
      cwd=str(tmp_path), env=environment(**env_overrides),
      capture_output=True, text=True, timeout=300, check=False)


def full_log(tmp_path) -> str:
  """The full log file of the run of `run_main` (its workdir's logs/)."""
  with open(tmp_path / 'run' / 'logs' / 'main.INFO', encoding='utf-8') as f:
    return f.read()
