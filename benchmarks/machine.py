"""The machine a benchmark ran on, for the figures it prints."""

from __future__ import annotations

import os
import platform


def usable_cores() -> int:
  """The cores this process may run on."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def cpu_description() -> str:
  """The CPU's model name and whether it has AVX2, AVX-512 and AMX."""
  name, cpu_flags = None, set()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == 'model name' and name is None:
          name = value.strip()
        elif key.strip() == 'flags':
          cpu_flags = set(value.split())
  except OSError:
    pass
  name = name or platform.processor() or 'unknown CPU'
  shown = ('avx2', 'avx512f', 'avx512_bf16', 'amx_tile', 'amx_bf16')
  return name + ' [' + ' '.join(
      f'{f}={"yes" if f in cpu_flags else "no"}' for f in shown) + ']'
