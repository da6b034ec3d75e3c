"""Where a jitted step's time goes, per operation, from JAX's profiler.

`profile(fn, state, batch, steps)` traces `steps` calls, reads the trace
(`jax.profiler.ProfileData`: on the CPU one event per executed HLO
instruction, on the pool thread that ran it; CPU only) and sums each instruction's time into
a category taken from its metadata in the compiled HLO: the Flax module path
and named scope of the JAX operation it came from, forward or backward
(`transpose(...)` in its name); the time no instruction runs is charged to
the one that ended last before it (see `_idle_after`).
`python benchmarks/train_step.py --profile` prints the table.
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
# The threads of XLA:CPU's pool, which run the instructions.
_CPU_WORKERS = 'tf_XLAEigen'
# Instructions without JAX metadata: XLA's layout copies, mostly.
_UNNAMED = 'no metadata: layout copies (transposes)'
# Wrappers around the instructions (they overlap them), profiler bookkeeping:
# not counted.
_WRAPPERS = ('ThunkExecutor', 'ThreadpoolListener', 'end:')


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


# An instruction of the compiled HLO and the shape it produces.
_SHAPE = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\w+\[[\d,]*\])', re.M)


def _categories(compiled_text: str) -> dict[str, str]:
  return {name: _category(op)
          for name, op in _INSTRUCTION.findall(compiled_text)}


def _events(trace: str, categories: dict[str, str] | None):
  """(start ns, end ns, category) of every executed instruction, by start;
  with `categories` None the instruction's own name instead."""
  events = []
  for plane in jax.profiler.ProfileData.from_file(trace).planes:
    for line in plane.lines:
      if not line.name.startswith(_CPU_WORKERS):
        continue
      for event in line.events:
        if not event.name.startswith(_WRAPPERS):
          events.append((event.start_ns, event.start_ns + event.duration_ns,
                         event.name if categories is None else
                         categories.get(event.name, _UNNAMED)))
  return sorted(events)


def _idle_after(events) -> dict[str, float]:
  """Nanoseconds with no instruction running, each gap charged to the
  instruction that ended last before it.

  XLA:CPU runs some instructions (convolutions) asynchronously: their event
  ends when the work is handed to the thread pool, and the work shows as a
  gap before the next instruction starts.
  """
  idle = collections.defaultdict(float)
  end, owner = events[0][1], events[0][2]
  for start, stop, category in events[1:]:
    if start > end:
      idle[owner] += start - end
    if stop > end:
      end, owner = stop, category
  return idle


def profile(fn, state, batch, steps: int):
  """Where `steps` calls of the jitted `fn(state, batch)` (compiled and warm)
  spend their time.

  Returns:
    (rows `[(category, ms of instructions a step, ms of idle time after
    them a step)]` largest total first, wall seconds per step, instructions
    run per step, the same rows per HLO instruction), and the state after.
  """
  compiled = fn.lower(state, batch).compile().as_text()
  categories = _categories(compiled)
  shapes = dict(_SHAPE.findall(compiled))
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
  events = _events(trace, categories)
  instructions = [(f'{name} {shapes.get(name, "")}'.strip(), ran, idle)
                  for name, ran, idle in _rows(_events(trace, None), steps)]
  return (_rows(events, steps), wall, len(events) / steps,
          instructions), state


def _rows(events, steps: int) -> list[tuple[str, float, float]]:
  """(name, ms a step it ran, ms a step of idle time after it), largest
  total first."""
  ran = collections.defaultdict(float)
  for begin, stop, name in events:
    ran[name] += stop - begin
  idle = _idle_after(events)
  return sorted(((k, ran[k] / 1e6 / steps, idle[k] / 1e6 / steps)
                 for k in ran), key=lambda row: -row[1] - row[2])


def print_table(result, top: int = 0) -> None:
  """The table `profile` measured, then its `top` instructions."""
  rows, wall, count, instructions = result
  print(f'{"category":52s} {"ran ms":>8s} {"+ idle ms":>9s}')
  for name, ran, idle in rows:
    print(f'{name:52s} {ran:8.1f} {idle:9.1f}')
  ran, idle = (sum(row[i] for row in rows) for i in (1, 2))
  print(f'step wall {1e3 * wall:.1f} ms: {count:.0f} instructions ran '
        f'{ran:.1f} ms (summed over threads); no instruction ran for '
        f'{idle:.1f} ms ({100 * idle / (1e3 * wall):.0f} % of the wall)')
  if top:
    print(f'{"instruction (of the compiled step)":52s} {"ran ms":>8s} '
          f'{"+ idle ms":>9s}')
    for name, ran, idle in instructions[:top]:
      print(f'{name:52s} {ran:8.1f} {idle:9.1f}')
