"""`main.keep_freed_host_memory`: freed host memory is kept for reuse.

Each case runs in a fresh interpreter (malloc options are process-wide) and
reads glibc's `mallinfo2` around a 64 MiB array: with glibc's defaults it is
a mapping of its own, unmapped on free (so the next one faults its pages in
again); tuned, it comes from malloc's heap, and after a free the next one
reuses the same bytes without the heap growing.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = """
import ctypes
import jax
import numpy as np
from smog_jax import main

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
main.keep_freed_host_memory()
print(*allocate_and_free())
print(*allocate_and_free())
"""


def _probe(**env_overrides):
  """(own mapping, kept after free, heap grew) of 3 allocations: untuned,
  first tuned, second tuned."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith('MALLOC_') and k != 'GLIBC_TUNABLES'}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=REPO, **env_overrides)
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
