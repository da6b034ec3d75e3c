"""Test set-up: 8 fake CPU devices, so sharding is exercised without a pod,
XLA's CPU backend at optimisation level 0, and a private HOME.

Every test, and every process a test starts (they inherit this
environment), sees a temporary HOME, tfds data dir and cache folders, so
the suite writes nothing into the user's `~/tensorflow_datasets`, caches or
configuration, and nothing into the checkout (no bytecode caches either:
the README's `python3 -B` for this process, the environment for the
workers and every process a test starts); `pytest_sessionfinish` fails
the run if it did anyway.
"""

import fcntl
import os
import shutil
import site
import subprocess
import sys
import tempfile

# The user's own folders, before they are replaced below.
REAL_HOME = os.path.expanduser('~')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Packages installed with `pip install --user` stay importable.
os.environ.setdefault('PYTHONUSERBASE', site.getuserbase())
os.environ['PYTHONDONTWRITEBYTECODE'] = '1'
sys.dont_write_bytecode = True
SANDBOX = tempfile.mkdtemp(prefix='smog_jax_tests_')
# One folder for the whole session, made by its first process (the xdist
# controller) and inherited by the workers: they share the compilation cache
# and the reference run of `smog_jax.main` instead of each making its own.
_SESSION_FOLDER = 'SMOG_JAX_TESTS_SESSION'
_OWNS_SESSION_FOLDER = _SESSION_FOLDER not in os.environ
if _OWNS_SESSION_FOLDER:
  os.environ[_SESSION_FOLDER] = tempfile.mkdtemp(prefix='smog_jax_session_')
SESSION = os.environ[_SESSION_FOLDER]
for _name, _folder in (('HOME', 'home'), ('TFDS_DATA_DIR', 'tfds'),
                       ('XDG_CACHE_HOME', 'cache'),
                       ('XDG_CONFIG_HOME', 'config'),
                       ('XDG_DATA_HOME', 'share'),
                       ('MPLCONFIGDIR', 'matplotlib')):
  os.environ[_name] = os.path.join(SANDBOX, _folder)
  os.makedirs(os.environ[_name])

# Must run before jax is imported anywhere in the test session (subprocesses
# that keep the environment inherit it). Level 0 skips LLVM's optimisation of
# the generated code: the same programs, with the same arithmetic, compiled
# much sooner (compiling is most of a test's time).
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') +
    ' --xla_force_host_platform_device_count=8'
    ' --xla_backend_optimization_level=0').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# One persistent compilation cache for the session and every process it
# starts: a program compiled once is not compiled again by the next run.
# (JAX reads an entry that another process is still writing as a miss.)
os.environ.update(
    JAX_COMPILATION_CACHE_DIR=os.path.join(SESSION, 'xla_cache'),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


def _user_files() -> set[str]:
  """What the suite must not change: the real HOME's top level, its
  `tensorflow_datasets` tree, and the checkout's untracked files and
  ignored folders (bytecode caches, pytest's cache)."""
  found = set()
  if os.path.isdir(REAL_HOME):
    found.update(os.path.join(REAL_HOME, n) for n in os.listdir(REAL_HOME))
  for root, dirs, files in os.walk(
      os.path.join(REAL_HOME, 'tensorflow_datasets')):
    found.update(os.path.join(root, n) for n in dirs + files)
  for listing in ('--untracked-files=all', '--ignored=matching'):
    status = subprocess.run(['git', 'status', '--porcelain', listing],
                            cwd=REPO, capture_output=True, text=True,
                            check=False).stdout
    found.update(os.path.join(REPO, line[3:])
                 for line in status.splitlines() if line[:2] in ('??', '!!'))
  return found


_BEFORE = _user_files()


def pytest_sessionfinish(session, exitstatus):
  del exitstatus
  written = sorted(_user_files() - _BEFORE)
  if written:
    sys.stderr.write(
        '\nThe tests wrote outside their temporary folders (delete these, '
        'then find the test that wrote them):\n  ' + '\n  '.join(written) +
        '\n')
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
  shutil.rmtree(SANDBOX, ignore_errors=True)
  if _OWNS_SESSION_FOLDER:
    shutil.rmtree(SESSION, ignore_errors=True)


# The longest files first, so that the workers finish together.
_FIRST = ('test_main_stops.py', 'test_main.py', 'test_notebook.py')


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.path.name not in _FIRST)


@pytest.fixture(scope='session')
def shared(tmp_path_factory):
  """The folder of the `smog_jax.main` runs (tests/main_runs.py) and their
  tfds data dir."""
  root = tmp_path_factory.mktemp('main')
  return {'data_dir': str(root / 'tfds'), 'root': root}


@pytest.fixture(scope='session')
def uninterrupted(shared):
  """The workdir of the reference run: 8 devices, never stopped, with the
  kNN monitor at the end (it reads the state, never changes it).

  Made once for the session: the first worker to ask runs it, holding a
  lock that the others wait on; every test only reads or copies it.
  """
  import main_runs  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(SESSION, 'main', 'uninterrupted')
  os.makedirs(os.path.dirname(workdir), exist_ok=True)
  with open(workdir + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(workdir + '.done'):
      main_runs.run_to_end(dict(shared, root=os.path.dirname(workdir)),
                           workdir, extra=('--config.knn_every_epochs=0',))
      open(workdir + '.done', 'w').close()
  return workdir


@pytest.fixture(scope='session')
def fixture_data_dir(tmp_path_factory):
  """A tfds data dir that the fixture's Fashion-MNIST copy is built into."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def pretrain(tmp_path_factory, fixture_data_dir):
  """(workdir, config, state): a saved random `:tiny` pre-training run."""
  import eval_fixtures  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('pretrain'))
  config = eval_fixtures.use_fixture(
      eval_fixtures.load_config('fashion_mnist', 'tiny'), fixture_data_dir)
  state = eval_fixtures.write_pretraining_workdir(workdir, config, step=7)
  return workdir, config, state
