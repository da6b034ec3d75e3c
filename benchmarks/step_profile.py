"""Where a jitted step's time goes, per operation, from JAX's profiler.

`profile(fn, state, batch, steps)` traces `steps` calls, reads the trace
(`jax.profiler.ProfileData`: on the CPU one event per executed HLO
instruction, on the thread that ran it) and sums each instruction's time into
a category taken from its metadata in the compiled HLO: the Flax module path
and named scope of the JAX operation it came from, forward or backward
(`transpose(...)` in its name). `python benchmarks/train_step.py --profile`
prints the table.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import time

import jax

# An instruction of the compiled HLO and the JAX operation it came from.
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{op_name="([^"]*)"', re.M)
# Wrappers around the instructions (they overlap them): not counted.
_WRAPPERS = ('ThunkExecutor', 'PjitFunction', 'PjRt')


def _category(op_name: str) -> str:
  """'backbone convolution (backward)', 'heads', 'augmentation', ...: from
  the Flax module path and the named scopes of the step (smog_jax)."""
  scopes = {'/augmentation/': 'augmentation',
            '/grouping/': 'SMoG math (assign, grouping, loss)',
            '/optimizer/': 'optimiser', '/ema/': 'EMA of the target'}
  kind = next((v for k, v in scopes.items() if k in op_name), None)
  if kind is None and ('/projector/' in op_name or '/predictor/' in op_name):
    kind = 'heads' + (' BatchNorm' if 'BatchNorm' in op_name else '')
  elif kind is None and '/backbone/' in op_name:
    if re.search(r'/(BatchNorm_\d+|bn_init|norm_proj)/', op_name):
      kind = 'backbone BatchNorm'
    elif re.search(r'/(Conv_\d+|conv_init|conv_proj)/', op_name):
      kind = 'backbone convolution'
    else:
      kind = 'backbone other (ReLU, add, pool)'
  kind = kind or 'other (random keys, metrics, bank, layout)'
  return kind + (' (backward)' if 'transpose(' in op_name else '')


def _categories(compiled_text: str) -> dict[str, str]:
  return {name: _category(op)
          for name, op in _INSTRUCTION.findall(compiled_text)}


def profile(fn, state, batch, steps: int):
  """Per-category milliseconds a step, the wall a step, and the threads'
  busy share, over `steps` calls of the jitted `fn(state, batch)` (already
  compiled and warmed up).

  Returns:
    (rows `[(category, ms per step, share of the busy time)]` largest first,
    wall seconds per step, busy seconds per step summed over threads,
    number of threads that ran instructions, instructions run per step), and
    the state after.
  """
  categories = _categories(fn.lower(state, batch).compile().as_text())
  folder = tempfile.mkdtemp(prefix='step_profile_')
  jax.block_until_ready(state)
  with jax.profiler.trace(folder):
    start = time.perf_counter()
    for _ in range(steps):
      state, _ = fn(state, batch)
    jax.block_until_ready(state)
    wall = (time.perf_counter() - start) / steps
  trace = sorted(glob.glob(os.path.join(folder, '**', '*.xplane.pb'),
                           recursive=True))[-1]
  totals = collections.defaultdict(float)
  threads, count = set(), 0
  for plane in jax.profiler.ProfileData.from_file(trace).planes:
    for line in plane.lines:
      for event in line.events:
        if event.name.startswith(_WRAPPERS) or event.name not in categories:
          continue
        totals[categories[event.name]] += event.duration_ns / 1e9 / steps
        threads.add(line.name)
        count += 1
  busy = sum(totals.values())
  rows = sorted(((k, 1e3 * v, v / busy) for k, v in totals.items()),
                key=lambda row: -row[1])
  return (rows, wall, busy, len(threads), count / steps), state


def print_table(result, cores: int) -> None:
  """The table `profile` measured, and how busy the cores were."""
  rows, wall, busy, threads, count = result
  print(f'{"category":52s} {"ms/step":>9s} {"share":>7s}')
  for name, ms, share in rows:
    print(f'{name:52s} {ms:9.1f} {100 * share:6.1f}%')
  print(f'step wall {1e3 * wall:.1f} ms; {count:.0f} instructions ran '
        f'{1e3 * busy:.1f} ms on {threads} threads: {busy / wall:.2f} of the '
        f'{cores} cores busy ({100 * (1 - busy / (cores * wall)):.0f} % '
        'idle)')
