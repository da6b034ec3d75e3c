r"""A static HTML report of a pre-training run: curves, groups, neighbours.

  python -m smog_jax.report --workdir runs/fmnist [--output runs/fmnist/report]

Reads `WORKDIR/metrics.jsonl` and the newest checkpoint (config, centroids,
memory bank) and writes `OUTPUT/index.html` with these PNG figures:

  curves.png       every scalar of metrics.jsonl against the step;
  group_sizes.png  per head, a histogram of the group sizes when every
                   memory-bank row is assigned to its nearest centroid;
  groups.png       for one head, groups sampled from the largest to the
                   smallest non-empty one: the training images whose bank
                   rows are nearest to the group's centroid;
  neighbours.png   training images and their nearest neighbours by cosine
                   similarity of their memory-bank projections.

Everything comes from the checkpoint and the dataset: no forward pass, so it
runs on a CPU in seconds. Images are read by index from the run's training
split (JPEG datasets: decoded and shrunk to `THUMBNAIL_SIDE`); class names
and agreement appear where the split has labels (a label-free folder or
STL-10's unlabelled split has none).
"""

from __future__ import annotations

import dataclasses
import html
import io
import math
import os
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from matplotlib import figure as mpl_figure
from matplotlib import ticker
from PIL import Image

from smog_jax import checkpointing
from smog_jax import console
from smog_jax import grouping
from smog_jax import jsonl
from smog_jax import startup
from smog_jax import data as data_lib
from smog_jax.data import sources

REPORT_SUBDIR = 'report'
# Rows scored against the centroids at once: keeps the [rows, K] score
# matrix small for ImageNet-sized banks.
_ASSIGN_CHUNK = 1 << 16

# Titles of the known metrics.jsonl fields, in plotting order; any other
# field is plotted after them under its own name.
CURVE_TITLES = {
    'loss': 'loss (group contrastive, mean over heads)',
    'learning_rate': 'learning rate',
    'group_momentum': 'group momentum (centroid update)',
    'ema_momentum': 'EMA momentum (target network)',
    'groups_used': 'groups used by a batch (min over heads)',
    'assignment_entropy': 'assignment entropy of a batch (nats)',
    'target_agreement': 'target agreement (online crop -> target group)',
    'knn_top1': 'kNN top-1 on the test split (%)',
    'images_per_sec': 'training images / s',
    'grad_norm': 'gradient norm',
}
_NOT_CURVES = ('step', 'epoch')
THUMBNAIL_SIDE = 96  # The longest side of a drawn JPEG-dataset image.


@dataclasses.dataclass(frozen=True)
class RunData:
  """What the figures are drawn from.

  Attributes:
    config: the pre-training config saved with the checkpoint.
    data: its data settings.
    step: the checkpoint's step.
    memory_bank: `[nL, N, D]` unit-norm projections, row = example index.
    centroids: `[H, K, D]` unit-norm group features.
    metrics: the records of metrics.jsonl (possibly empty).
  """
  config: Any
  data: data_lib.DataSettings
  step: int
  memory_bank: np.ndarray
  centroids: np.ndarray
  metrics: list[dict[str, float]]


class Examples:
  """The run's training images and labels, read by index when drawn."""

  def __init__(self, data: data_lib.DataSettings):
    self._source = sources.open_source(data, sources.train_split(data))
    label = sources.get_builder(data).info.features['label']
    self._names = getattr(label, 'names', None)

  def __len__(self) -> int:
    return len(self._source)

  def image(self, index: int) -> np.ndarray:
    """uint8 `[H, W, C]` (a JPEG decoded to RGB and shrunk)."""
    image = self._source.read(np.array([index]))[0][0]
    if not self._source.encoded:
      return image
    thumbnail = Image.open(io.BytesIO(image)).convert('RGB')
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return np.asarray(thumbnail)

  def labels(self, indices: np.ndarray) -> np.ndarray:
    return self._source.read(np.asarray(indices).reshape(-1))[1].reshape(
        np.shape(indices))

  def names(self, labels: np.ndarray) -> Sequence[str] | None:
    """The class names, or None if `labels` are not all classes."""
    if self._names is None or labels.size == 0 or labels.min() < 0:
      return None
    return self._names


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The records of `WORKDIR/metrics.jsonl`, in file order ([] if absent)."""
  return jsonl.read(os.path.join(workdir, jsonl.METRICS_FILE))


def load_run(workdir: str) -> RunData:
  """The newest checkpoint's config, bank and centroids, and the metrics."""
  config, tree, step = checkpointing.load_host_state(workdir)
  if tree.get('memory_bank') is None:
    raise ValueError(f'The checkpoint of {workdir!r} (step {step}) has no '
                     'memory bank: pass the workdir of a smog_jax.main run.')
  # Rows past the data set pad the bank to shard it (memory_bank.padded_rows).
  data = data_lib.resolve(config)
  num_examples = data_lib.num_train_examples(data)
  return RunData(config=config, data=data, step=step,
                 memory_bank=np.asarray(
                     tree['memory_bank'][:, :num_examples], np.float32),
                 centroids=np.asarray(tree['centroids'], np.float32),
                 metrics=read_metrics(workdir))


def bank_of_head(head: int, num_banks: int) -> int:
  """The bank a head's centroids follow: the train step updates head h with
  the projections of large crop `h mod n_large`."""
  return head % num_banks


def assign_bank(memory_bank: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """`int32 [H, N]`: each bank row's group under each head.

  Head h assigns the rows of bank `bank_of_head(h)` with the training code's
  own `grouping.assign` (argmax of dot products).
  """
  num_banks = memory_bank.shape[0]
  out = []
  for h in range(centroids.shape[0]):
    bank = memory_bank[bank_of_head(h, num_banks)]
    c = jnp.asarray(centroids[h])
    out.append(np.concatenate([
        np.asarray(grouping.assign(jnp.asarray(bank[i:i + _ASSIGN_CHUNK]), c))
        for i in range(0, bank.shape[0], _ASSIGN_CHUNK)]))
  return np.stack(out).astype(np.int32)


def group_sizes(assignments: np.ndarray, num_groups: int) -> np.ndarray:
  """`int [H, K]`: rows per group and head."""
  return np.stack([np.bincount(a, minlength=num_groups) for a in assignments])


def sample_groups(sizes: np.ndarray, num: int) -> list[tuple[str, int]]:
  """`num` non-empty groups evenly spaced from the largest to the smallest.

  Groups are ranked by size (descending; ties by index). With `num` >= 3 the
  median group (of n non-empty ones, rank (n - 1) // 2 from 0) replaces the
  evenly spaced pick nearest to it.

  Args:
    sizes: `[K]` group sizes of one head.
    num: how many groups to return (fewer if fewer are non-empty).

  Returns:
    `(name, group index)` pairs, largest first; names are 'largest',
    'median', 'smallest' or 'size rank r of n' (1-based).
  """
  order = np.lexsort((np.arange(len(sizes)), -sizes))
  order = order[sizes[order] > 0]
  n = len(order)
  if n == 0:
    return []
  positions = np.round(np.linspace(0, n - 1, min(num, n))).astype(int)
  named = {0: 'largest', n - 1: 'smallest'}
  if len(positions) >= 3:
    median = (n - 1) // 2  # the lower one when n is even
    positions[np.argmin(np.abs(positions - median))] = median
    named[median] = 'median'
  positions = sorted(set(positions.tolist()))
  return [(named.get(p, f'size rank {p + 1} of {n}'), int(order[p]))
          for p in positions]


def nearest_to_centroid(bank: np.ndarray, assignments: np.ndarray,
                        centroid: np.ndarray, group: int,
                        num: int) -> np.ndarray:
  """Indices of the `num` rows of `group` most similar to its centroid."""
  members = np.flatnonzero(assignments == group)
  scores = bank[members] @ centroid
  return members[np.argsort(-scores, kind='stable')[:num]]


def nearest_neighbours(features: np.ndarray, queries: np.ndarray,
                       num: int) -> np.ndarray:
  """`[Q, num]` rows with the highest dot product with each query row.

  The query itself is excluded. `features` should be unit-norm (then the
  order is by cosine similarity).
  """
  out = []
  for start in range(0, len(queries), 256):
    q = queries[start:start + 256]
    sims = features[q] @ features.T
    sims[np.arange(len(q)), q] = -np.inf
    top = np.argpartition(-sims, num - 1, axis=1)[:, :num]
    order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1,
                       kind='stable')
    out.append(np.take_along_axis(top, order, 1))
  return np.concatenate(out)


# ------------------------------------------------------------------------------
# Figures (matplotlib's object API: no pyplot, so no global backend change).


def _epoch_starts(records: list[dict[str, float]]) -> list[int]:
  """Steps where a new epoch (k-means regrouping, target reset) began."""
  for r in records:
    if r.get('epoch', 0) > 0:
      steps_per_epoch = round(r['step'] / r['epoch'])
      last = records[-1]['step']
      return list(range(steps_per_epoch, last, steps_per_epoch))
  return []


def plot_curves(records: list[dict[str, float]], num_groups: int,
                path: str) -> list[str]:
  """Writes one panel per metric; returns the metric names drawn."""
  names = [k for k in CURVE_TITLES if any(k in r for r in records)]
  names += sorted({k for r in records for k in r} - set(names)
                  - set(_NOT_CURVES))
  cols = 3
  rows = max(1, math.ceil(len(names) / cols))
  fig = mpl_figure.Figure(figsize=(4.2 * cols, 2.6 * rows),
                          layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  boundaries = _epoch_starts(records)
  # One step axis for all panels, so that a metric logged rarely (kNN) lines
  # up with the others.
  last_step = max(r['step'] for r in records)
  for ax, name in zip(axes, names):
    pts = [(r['step'], r[name]) for r in records if name in r]
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    if name == 'knn_top1':
      y = 100 * y
    ax.plot(x, y, marker='o' if len(x) < 5 else None, lw=1.2)
    if len(x) < 5:
      for xi, yi in zip(x, y):
        ax.annotate(f'{yi:.3g}', (xi, yi), textcoords='offset points',
                    xytext=(0, 6), ha='center', fontsize=8)
    reference = {'groups_used': (num_groups, f'all K = {num_groups} groups'),
                 'assignment_entropy': (math.log(num_groups),
                                        f'uniform: ln K = '
                                        f'{math.log(num_groups):.2f}')}
    if name in reference:
      value, text = reference[name]
      ax.axhline(value, color='C1', ls='--', lw=0.8)
      ax.annotate(text, xy=(0.02, value), xycoords=('axes fraction', 'data'),
                  xytext=(0, -3), textcoords='offset points', va='top',
                  fontsize=8, color='C1')
    for b in boundaries:
      ax.axvline(b, color='grey', ls=':', lw=0.8)
    ax.set_xlim(0, last_step * 1.03)
    ax.set_title(CURVE_TITLES.get(name, name), fontsize=9)
    ax.set_xlabel('step', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in axes[len(names):]:
    ax.set_visible(False)
  if boundaries:
    fig.suptitle('dotted lines: epoch starts (k-means regrouping and target '
                 'reset)', fontsize=9, color='grey')
  _save(fig, path)
  return names


def plot_group_sizes(sizes: np.ndarray, num_banks: int, path: str) -> None:
  """One histogram of the group sizes per head."""
  num_heads, num_groups = sizes.shape
  num_rows = int(sizes[0].sum())
  fig = mpl_figure.Figure(figsize=(4.2 * num_heads, 3.0),
                          layout='constrained')
  axes = fig.subplots(1, num_heads, squeeze=False)[0]
  uniform = num_rows / num_groups
  for h, ax in enumerate(axes):
    s = sizes[h]
    ax.hist(s[s > 0], bins=min(40, max(5, num_groups // 4)), color='C0')
    ax.axvline(uniform, color='C1', ls='--', lw=1)
    ax.text(uniform, 0.97, f' N/K = {uniform:.0f}', color='C1', fontsize=8,
            va='top', transform=ax.get_xaxis_transform())
    empty = int(np.sum(s == 0))
    nonempty = np.sort(s[s > 0])
    ax.set_title(f'head {h} (bank {bank_of_head(h, num_banks)}): '
                 f'{num_groups - empty} of {num_groups} groups non-empty\n'
                 f'sizes: largest {nonempty[-1]:,}, median '
                 f'{int(np.median(nonempty)):,}, smallest {nonempty[0]:,}',
                 fontsize=9)
    ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel('training examples in the group', fontsize=8)
    ax.set_ylabel('groups', fontsize=8)
    ax.tick_params(labelsize=7)
  fig.suptitle(f'Group sizes: each of the N = {num_rows:,} memory-bank rows '
               'assigned to its nearest centroid', fontsize=10)
  _save(fig, path)


def _save(fig: mpl_figure.Figure, path: str) -> None:
  """Writes `fig` as a 256-colour PNG: a third of the RGBA file's size."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=80)
  Image.open(buffer).convert('RGB').quantize(256).save(path, optimize=True)


def _show(ax, image: np.ndarray) -> None:
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap='gray', vmin=0, vmax=255)
  else:
    ax.imshow(image)
  ax.set_xticks([])
  ax.set_yticks([])


def _frame(ax, color: str) -> None:
  for spine in ax.spines.values():
    spine.set_edgecolor(color)
    spine.set_linewidth(2.5)


def _purity(labels: np.ndarray, names: Sequence[str] | None) -> str:
  """', most common class Trouser (81%)': the group's majority class and
  its share ('' without labels)."""
  if names is None:
    return ''
  counts = np.bincount(labels, minlength=len(names))
  top = int(np.argmax(counts))
  return (f', most common class {names[top]} '
          f'({100 * counts[top] / len(labels):.0f}%)')


def plot_groups(examples: Examples, bank: np.ndarray,
                assignments: np.ndarray, centroids: np.ndarray,
                picks: list[tuple[str, int]], per_group: int, head: int,
                path: str) -> None:
  """A row of the images nearest to the centroid for every picked group."""
  fig = mpl_figure.Figure(
      figsize=(max(0.8 * per_group, 7), 1.1 * len(picks) + 0.5),
      layout='constrained')
  fig.suptitle(f'Head {head}: the training images nearest to each centroid, '
               'from the largest to the smallest non-empty group', fontsize=10)
  # One sub-figure per group, so that the row titles do not widen a column.
  for sub, (name, k) in zip(fig.subfigures(len(picks), 1, squeeze=False)[:, 0],
                            picks):
    members = np.flatnonzero(assignments == k)
    idx = nearest_to_centroid(bank, assignments, centroids[k], k, per_group)
    labels = examples.labels(members)
    sub.suptitle(f'{name}: group #{k}, {len(members):,} images'
                 f'{_purity(labels, examples.names(labels))}',
                 x=0.0, ha='left', fontsize=9)
    for col, ax in enumerate(sub.subplots(1, per_group)):
      if col < len(idx):
        _show(ax, examples.image(idx[col]))
      else:
        ax.set_axis_off()
  _save(fig, path)


def class_agreement(examples: Examples, checked: np.ndarray,
                    neighbours: np.ndarray) -> tuple[float, float] | None:
  """(share of the neighbours in their query's class, that share for random
  pairs: sum_c p_c^2 over the queries' classes), or None without labels."""
  query_labels = examples.labels(checked)
  neighbour_labels = examples.labels(neighbours)
  if examples.names(np.concatenate([query_labels,
                                    neighbour_labels.ravel()])) is None:
    return None
  chance = float(np.sum((np.bincount(query_labels) / len(checked)) ** 2))
  return float(np.mean(neighbour_labels == query_labels[:, None])), chance


def plot_neighbours(examples: Examples, queries: np.ndarray,
                    neighbours: np.ndarray, bank_index: int,
                    agreement: tuple[float, float] | None, num_checked: int,
                    path: str) -> None:
  """Each query (left) and its nearest neighbours, framed by class match
  when the split has labels."""
  rows, num = neighbours.shape
  labels = examples.labels(np.concatenate([queries[:, None], neighbours], 1))
  names = examples.names(labels)
  fig = mpl_figure.Figure(figsize=(0.85 * (num + 1) + 0.4, 1.15 * rows + 0.7),
                          layout='constrained')
  # Column 1 is an empty spacer between the queries and their neighbours.
  axes = fig.subplots(rows, num + 2, squeeze=False,
                      gridspec_kw={'width_ratios': [1, 0.15] + [1] * num})
  for ax in axes[:, 1]:
    ax.set_axis_off()
  for r, q in enumerate(queries):
    _show(axes[r, 0], examples.image(q))
    _frame(axes[r, 0], 'black')
    axes[r, 0].set_title('query' + (f':\n{names[labels[r, 0]]}' if names
                                    else ''), fontsize=7, fontweight='bold')
    for c, n in enumerate(neighbours[r]):
      ax = axes[r, c + 2]
      _show(ax, examples.image(n))
      if names:
        _frame(ax, 'tab:green' if labels[r, c + 1] == labels[r, 0]
               else 'tab:red')
        ax.set_title(names[labels[r, c + 1]], fontsize=7)
  title = ('Nearest neighbours by cosine similarity of memory-bank '
           f'projections (bank {bank_index})')
  if agreement is not None:
    title += (f'; green = same class as the query.\nOver {num_checked:,} '
              f'random queries, {100 * agreement[0]:.1f}% of the neighbours '
              'share the query\'s class (random pairs: '
              f'{100 * agreement[1]:.1f}%).')
  fig.suptitle(title, fontsize=9)
  _save(fig, path)


# ------------------------------------------------------------------------------
# The report.


_CSS = ('body{font-family:sans-serif;max-width:1100px;margin:2em auto;'
        'color:#222}img{max-width:100%;border:1px solid #ddd}'
        'figcaption{color:#555;font-size:.9em;margin:.3em 0 2em}'
        'table{border-collapse:collapse}td,th{padding:2px 10px;'
        'text-align:left;border-bottom:1px solid #eee}')


def _html(title: str, facts: list[tuple[str, str]],
          figures: list[tuple[str, str]], notes: list[str]) -> str:
  rows = ''.join(f'<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td>'
                 '</tr>' for k, v in facts)
  figs = ''.join(f'<figure><img src="{html.escape(src)}" '
                 f'alt="{html.escape(src)}">'
                 f'<figcaption>{html.escape(cap)}</figcaption></figure>'
                 for src, cap in figures)
  extra = ''.join(f'<p>{html.escape(n)}</p>' for n in notes)
  return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>'
          f'{html.escape(title)}</title><style>{_CSS}</style></head><body>'
          f'<h1>{html.escape(title)}</h1><table>{rows}</table>{extra}{figs}'
          '</body></html>\n')


def write_report(workdir: str, output: str | None = None, head: int = 0,
                 num_groups_shown: int = 5, images_per_group: int = 12,
                 num_queries: int = 6, num_neighbours: int = 8,
                 agreement_queries: int = 1000, seed: int = 0) -> str:
  """Writes the report of `workdir` into `output`; returns index.html's path.

  Args:
    workdir: a `smog_jax.main` workdir.
    output: folder to write (default `WORKDIR/report`).
    head: the head whose groups `groups.png` shows.
    num_groups_shown: groups in `groups.png`.
    images_per_group: images per group in `groups.png`.
    num_queries: query rows in `neighbours.png`.
    num_neighbours: neighbours per query.
    agreement_queries: random queries behind the class-agreement figure.
    seed: draws the queries.
  """
  output = output or os.path.join(workdir, REPORT_SUBDIR)
  run = load_run(workdir)
  num_heads, num_groups, dim = run.centroids.shape
  if not 0 <= head < num_heads:
    raise ValueError(f'--head={head} is out of range: the run has {num_heads} '
                     f'heads (0..{num_heads - 1}).')
  os.makedirs(output, exist_ok=True)
  num_banks, num_rows, _ = run.memory_bank.shape
  settings = run.data
  facts = [('workdir', os.path.abspath(workdir)),
           ('checkpoint step', f'{run.step:,}'),
           ('dataset', f'{settings.dataset} ({settings.train_split}, '
                       f'{num_rows:,} examples)'),
           ('groups', f'{num_heads} heads x {num_groups} groups, '
                      f'projection dim {dim}')]
  last = {}  # metric -> (step, value) of its newest record
  for r in run.metrics:
    last.update({k: (r['step'], v) for k, v in r.items()
                 if k not in _NOT_CURVES})
  facts += [(f'{k} at step {step:,}', f'{v:.4g}')
            for k, (step, v) in last.items()]
  figures, notes = [], []

  if run.metrics:
    plot_curves(run.metrics, num_groups, os.path.join(output, 'curves.png'))
    figures.append(('curves.png', 'Training curves from metrics.jsonl (one '
                    'point every log_every_steps). groups_used, entropy and '
                    'agreement are measured on each logged batch.'))
  else:
    notes.append(f'No {jsonl.METRICS_FILE} in the workdir: no training '
                 'curves.')

  assignments = assign_bank(run.memory_bank, run.centroids)
  sizes = group_sizes(assignments, num_groups)
  plot_group_sizes(sizes, num_banks, os.path.join(output, 'group_sizes.png'))
  figures.append(('group_sizes.png', 'How the memory bank (the projections of '
                  'the last epoch, one row per training example) spreads over '
                  'the groups of each head at the checkpoint. Head h is '
                  'matched with bank h mod n_large, the large crop the train '
                  'step updates its centroids with. The dashed line is the '
                  'size of perfectly balanced groups; empty groups are '
                  'counted in the title, not drawn.'))

  examples = Examples(settings)
  if len(examples) != num_rows:
    raise ValueError(
        f'The memory bank has {num_rows} rows but {settings.train_split} '
        f'(train_slice={settings.train_slice}) has {len(examples)} examples: '
        'the dataset is not the one this run trained on.')
  bank_index = bank_of_head(head, num_banks)
  picks = sample_groups(sizes[head], num_groups_shown)
  plot_groups(examples, run.memory_bank[bank_index], assignments[head],
              run.centroids[head], picks, images_per_group, head,
              os.path.join(output, 'groups.png'))
  figures.append(('groups.png', f'Groups of head {head}, from the largest '
                  'to the smallest non-empty one: each row shows the '
                  'training images whose bank rows are most similar to the '
                  'group\'s centroid, with the group\'s size and (where the '
                  'split has labels) majority class; labels are not used in '
                  'training.'))
  rng = np.random.default_rng(seed)
  bank = run.memory_bank[0]
  checked = rng.choice(num_rows, min(agreement_queries, num_rows),
                       replace=False)
  neighbours = nearest_neighbours(bank, checked, num_neighbours)
  plot_neighbours(examples, checked[:num_queries], neighbours[:num_queries],
                  0, class_agreement(examples, checked, neighbours),
                  len(checked), os.path.join(output, 'neighbours.png'))
  figures.append(('neighbours.png', 'Random training images (left) and '
                  'their nearest neighbours among all training images, by '
                  'cosine similarity of the memory-bank projections (bank '
                  '0: the online projector output of the first large crop, '
                  'written when the example was last in a batch), not of '
                  'backbone features.'))
  path = os.path.join(output, 'index.html')
  with open(path, 'w') as f:
    f.write(_html(f'SMoG run report: step {run.step:,}', facts, figures,
                  notes))
  console.block(f'Report of {workdir} (step {run.step:,}): {path}',
                [('figures', ', '.join(name for name, _ in figures))])
  return path


def define_flags() -> None:
  """Registers the binary's flags (at run time, not import time)."""
  flags.DEFINE_string('workdir', None, 'A smog_jax.main workdir.')
  flags.DEFINE_string('output', None, 'Output folder (default WORKDIR/report).')
  flags.DEFINE_integer('head', 0, 'Head whose groups groups.png shows.')
  flags.DEFINE_integer('num_groups_shown', 5, 'Groups in groups.png.')
  flags.DEFINE_integer('images_per_group', 12, 'Images per group row.')
  flags.DEFINE_integer('num_queries', 6, 'Query rows in neighbours.png.')
  flags.DEFINE_integer('num_neighbours', 8, 'Neighbours per query.')
  flags.DEFINE_integer('seed', 0, 'Seed of the query draw.')
  flags.mark_flags_as_required(['workdir'])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  startup.start_binary('report', f.workdir, multi_host=False,
                       quiet_imports=console.TENSORFLOW)
  write_report(f.workdir, f.output, head=f.head,
               num_groups_shown=f.num_groups_shown,
               images_per_group=f.images_per_group,
               num_queries=f.num_queries, num_neighbours=f.num_neighbours,
               seed=f.seed)


if __name__ == '__main__':
  define_flags()
  app.run(main)
