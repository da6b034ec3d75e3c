"""Process start-up of every binary: its terminal and log file
(smog_jax.console), XLA:CPU's flag, the multi-host runtime, glibc's malloc for
XLA:CPU's per-step buffers (docs/benchmarks.md).

Each binary's `main` calls `start_binary(...)` first, before JAX creates a
backend; benchmarks and tests call `start_process()` alone.
"""

from __future__ import annotations

import ctypes
import os

import jax
from absl import logging

from smog_jax import console
from smog_jax import distributed


# XLA:CPU runs this project's convolutions faster when its YNNPACK fusion
# does not claim them one by one (docs/benchmarks.md). Only the CPU backend
# reads it.
_CPU_XLA_FLAGS = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'


def tune_cpu_backend() -> None:
  """Adds the CPU convolution flag to XLA_FLAGS unless the user set it.

  Must run before JAX creates its first backend (XLA reads the flags then).
  """
  current = os.environ.get('XLA_FLAGS', '')
  if 'xla_cpu_experimental_ynn_fusion_type' not in current:
    os.environ['XLA_FLAGS'] = f'{current} {_CPU_XLA_FLAGS}'.strip()


# glibc's malloc options (malloc.h): M_TRIM_THRESHOLD, M_MMAP_MAX.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4

# The same two settings as glibc tunables, plus transparent huge pages for
# malloc's memory, which only a tunable can ask for (glibc reads tunables
# when a process starts, so a running process cannot switch them on): for a
# CPU run, `GLIBC_TUNABLES=<this> python -m smog_jax.main ...`
# (docs/benchmarks.md).
CPU_MALLOC_TUNABLES = ('glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:'
                       'glibc.malloc.trim_threshold=2147483647')


def _malloc_set_by_environment() -> bool:
  return any(k.startswith('MALLOC_') or k == 'GLIBC_TUNABLES'
             for k in os.environ)


def keep_freed_host_memory() -> bool:
  """Makes glibc's malloc reuse freed memory (`start_process` decides when).

  XLA:CPU allocates a step's temporary buffers afresh every step; glibc
  serves large ones with `mmap` and unmaps them on free, so in the training
  loop each step faulted every page in again and a fifth of the CPU time
  went to the kernel (docs/benchmarks.md). With `mmap` and heap trimming off,
  freed buffers stay in malloc's heaps and are reused (except those over the
  64 MiB of a thread's arena, which glibc always maps).

  Returns:
    Whether it did: False where the C library is not glibc.
  """
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except AttributeError:
    return False
  mallopt(_M_MMAP_MAX, 0)
  mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
  return True


def start_process(multi_host: bool = True) -> None:
  """Readies this process for JAX; each binary's `main` calls it first.

  Adds the CPU convolution flag, joins the multi-host runtime if
  `multi_host` (the binary defines `distributed.define_flags()`), then on
  the CPU backend sets glibc's malloc up for XLA:CPU's per-step buffers, in
  this process (`keep_freed_host_memory`), unless the environment sets
  glibc's malloc itself (`GLIBC_TUNABLES`, even empty, or `MALLOC_*_`; e.g.
  `CPU_MALLOC_TUNABLES`, which adds huge pages).
  """
  tune_cpu_backend()
  if multi_host:
    distributed.initialize()
  if jax.default_backend() != 'cpu' or _malloc_set_by_environment():
    return
  if keep_freed_host_memory():
    logging.info('glibc malloc keeps freed memory for reuse; for huge pages '
                 'too, start with GLIBC_TUNABLES=%s', CPU_MALLOC_TUNABLES)


def start_binary(program: str, workdir: str | None, multi_host: bool,
                 quiet_imports: tuple[str, ...] = ()) -> None:
  """What every binary's `main` does first: its terminal and log file
  (`console.setup`), then `start_process(multi_host)`."""
  console.setup(program, workdir, quiet_imports=quiet_imports)
  start_process(multi_host)
