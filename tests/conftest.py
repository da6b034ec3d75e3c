"""Test set-up: 8 fake CPU devices, so sharding is exercised without a pod,
and XLA's CPU backend at optimisation level 0."""

import os

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

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


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
