"""`startup.start_process` keeps freed host memory for reuse, in place
(`keep_freed_host_memory`); `startup.CPU_MALLOC_TUNABLES`, the documented
environment line, does the same from the process's start.

Each case runs in a fresh interpreter (malloc options are process-wide) and
reads glibc's `mallinfo2` around a 64 MiB array: with glibc's defaults it is
a mapping of its own, unmapped on free (so the next one faults its pages in
again); tuned, it comes from malloc's heap, and after a free the next one
reuses the same bytes without the heap growing.
"""

import subprocess
import sys

import cli_runs
from smog_jax import startup

_PROBE = """
import ctypes
import jax
import numpy as np
from absl import flags
from smog_jax import distributed, startup

distributed.define_flags()
flags.FLAGS(['probe'])
jax.default_backend()  # Initialised first: its own allocations aside.

FIELDS = ('arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks '
          'fordblks keepcost').split()
class MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
SIZE = 64 << 20

def allocate_and_free():
  heap = libc.mallinfo2().arena
  array = np.ones(SIZE, np.uint8)
  own_mapping = libc.mallinfo2().hblkhd >= SIZE
  del array
  info = libc.mallinfo2()
  return own_mapping, info.fordblks >= SIZE, info.arena > heap

print(*allocate_and_free())
startup.start_process()
print(*allocate_and_free())
print(*allocate_and_free())
"""


def _probe(**env_overrides):
  """(own mapping, kept after free, heap grew) of 3 allocations: untuned,
  first tuned, second tuned."""
  env = cli_runs.environment(**env_overrides)
  out = subprocess.run([sys.executable, '-c', _PROBE], env=env, check=True,
                       capture_output=True, text=True, timeout=120).stdout
  return [tuple(word == 'True' for word in line.split())
          for line in out.splitlines()]


def test_freed_buffers_are_kept_and_reused():
  untuned, first, second = _probe()
  # Whether the heap grew beside an untuned block or the first tuned one
  # depends on other allocations; once 64 MiB are kept free it must not.
  assert untuned[:2] == (True, False)  # Mapped, then given back.
  assert first[:2] == (False, True)  # From the heap, kept after free.
  assert second == (False, True, False)  # The kept bytes again.


def test_malloc_settings_of_the_environment_are_left_alone():
  own_mapping_and_kept = [probe[:2] for probe in _probe(GLIBC_TUNABLES='')]
  assert own_mapping_and_kept == [(True, False)] * 3


def test_the_documented_tunables_keep_freed_buffers():
  # Set at start-up, no mallopt: kept and reused from the first allocation.
  probes = _probe(GLIBC_TUNABLES=startup.CPU_MALLOC_TUNABLES)
  assert [probe[:2] for probe in probes] == [(False, True)] * 3
  assert probes[2][2] is False


def _run_main(tmp_path, **env_overrides):
  """The terminal output and the full log of `python -m smog_jax.main`
  stopped by a bad config value."""
  proc = cli_runs.run_main(
      tmp_path, '--config.smog.temperature=-1',
      f'--config.data.fashion_mnist_idx_dir={cli_runs.FIXTURE}',
      **env_overrides)
  assert proc.returncode == 1, proc.stderr[-2000:]
  return proc.stderr, cli_runs.full_log(tmp_path)


def test_a_cpu_run_tunes_malloc_in_its_own_process(tmp_path):
  # No restart: the process a debugger or profiler starts is the program.
  terminal, log = _run_main(tmp_path)
  assert log.count('glibc malloc keeps freed memory for reuse') == 1
  assert terminal.count('smog_jax.main: config.smog.temperature') == 1


def test_a_run_whose_environment_sets_malloc_is_left_alone(tmp_path):
  terminal, log = _run_main(tmp_path,
                            GLIBC_TUNABLES=startup.CPU_MALLOC_TUNABLES)
  assert 'glibc malloc keeps' not in terminal + log
  assert terminal.count('smog_jax.main: config.smog.temperature') == 1
