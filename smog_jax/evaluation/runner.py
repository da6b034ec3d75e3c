"""The linear-evaluation / kNN run behind `python -m smog_jax.linear_eval`.

Modes (`config.mode`), each an evaluator of `smog_jax.evaluation.evaluators`:
  'linear': the reference protocol, the probe on freshly augmented crops
    through the frozen backbone; checkpointed and resumable (`Linear`).
  'fast': the probe on features of the un-augmented training set, extracted
    once (`FastLinear`).
  'knn': weighted kNN (k, temperature) on the same fixed features (`Knn`).

`config.pretrained` selects the features: a pre-training workdir, an exported
backbone directory, 'random' (config.model with random weights from
config.seed) or 'pixels' (flattened normalised pixels).

Outputs (process 0 only): WORKDIR/metrics.jsonl, one JSON object per logged
step/epoch, and WORKDIR/results.json. Accuracies there are percentages.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import tensorflow as tf
from jax.sharding import Mesh

from smog_jax import checkpointing
from smog_jax import console
from smog_jax import export as export_lib
from smog_jax import jsonl
from smog_jax import metrics as metrics_lib
from smog_jax import models
from smog_jax import sharding as sharding_lib
from smog_jax import validation
from smog_jax.data import settings as settings_lib
from smog_jax.data import sources
from smog_jax.evaluation import evaluators
from smog_jax.evaluation import features as features_lib
from smog_jax.evaluation import linear as linear_lib

MODES = ('linear', 'fast', 'knn')
RESULTS_FILE = 'results.json'
# Preprocessing fields a pretrained backbone imposes on the evaluation data:
# it only understands inputs normalised (and with the channel count) as it
# was trained; the image size stays the evaluation dataset's.
INHERITED_DATA_FIELDS = ('mean', 'std', 'channels')


@dataclasses.dataclass(frozen=True)
class FeatureSource:
  """A frozen feature extractor and where it came from."""
  module: nn.Module
  variables: Any
  step: int
  description: str
  preprocessing: dict[str, Any] | None


def load_feature_source(config: ml_collections.ConfigDict) -> FeatureSource:
  """The backbone named by `config.pretrained` (see module docstring)."""
  pretrained = config.pretrained
  if not pretrained:
    raise ValueError("Set --config.pretrained to a pre-training workdir, an "
                     "exported backbone directory, 'random' or 'pixels'.")
  if pretrained == 'pixels':
    return FeatureSource(features_lib.PixelFeatures(), {}, 0, 'pixels', None)
  if pretrained == 'random':
    module = models.build_backbone(config.model)
    d = config.data
    variables = jax.jit(functools.partial(module.init, train=False))(
        jax.random.key(config.seed),
        jnp.zeros((1, d.image_size, d.image_size, d.channels)))
    return FeatureSource(module, jax.device_get(variables), 0, 'random', None)
  loaded = export_lib.load_backbone_info(pretrained)
  return FeatureSource(loaded.module, loaded.variables, loaded.step,
                       checkpointing.absolute(pretrained), loaded.preprocessing)


def with_source_preprocessing(config: ml_collections.ConfigDict,
                              source: FeatureSource
                              ) -> ml_collections.ConfigDict:
  """`config` with the backbone's normalisation (if inherit_preprocessing)."""
  if source.preprocessing is None or not config.inherit_preprocessing:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  with config.unlocked():
    for name in INHERITED_DATA_FIELDS:
      config.data[name] = source.preprocessing[name]
  return config


def linear_config(config: ml_collections.ConfigDict,
                  data: settings_lib.DataSettings) -> linear_lib.LinearConfig:
  """The probe's hyper-parameters: `config.linear` and the batch sizes."""
  lin = config.linear
  return linear_lib.LinearConfig(
      epochs=lin.epochs, batch_size=config.batch_size,
      learning_rate=lin.learning_rate, momentum=lin.momentum,
      weight_decay=lin.weight_decay, standardize=lin.standardize,
      seed=config.seed,
      eval_batch_size=data.eval_batch_size)


def make_evaluator(config: ml_collections.ConfigDict,
                   data: settings_lib.DataSettings, workdir: str,
                   module: nn.Module, mesh: Mesh,
                   log: metrics_lib.MetricsWriter
                   ) -> evaluators.Evaluator:
  """The evaluator of `config.mode` on `data` (`config.data` resolved)."""
  args = (data, mesh, module, config.num_classes)
  if config.mode == 'knn':
    return evaluators.Knn(*args, k=config.knn.k,
                          temperature=config.knn.temperature)
  if config.mode == 'fast':
    return evaluators.FastLinear(*args, linear=linear_config(config, data),
                                 log=log)
  return evaluators.Linear(
      *args, linear=linear_config(config, data), workdir=workdir, log=log,
      log_every=config.log_every_steps,
      checkpoint_every=config.checkpoint_every_epochs,
      standardize_batches=config.linear.standardize_batches)


_MODE_TEXT = {
    'linear': 'the probe on augmented crops through the frozen backbone',
    'fast': 'the probe on fixed features of the un-augmented training set',
    'knn': 'weighted kNN on fixed features',
}


def show_start(config: ml_collections.ConfigDict, config_name: str,
               source: FeatureSource, data: settings_lib.DataSettings,
               workdir: str) -> None:
  """The start-up block: which features, which protocol, where."""
  lin = config.linear
  if config.mode == 'knn':
    protocol = f'k={config.knn.k}, temperature {config.knn.temperature}'
  else:
    protocol = (f'{lin.epochs} epochs of SGD (lr {lin.learning_rate}, '
                f'momentum {lin.momentum}, weight decay {lin.weight_decay}),'
                f' batch {config.batch_size}, features '
                f'{"standardised" if lin.standardize else "raw"}')
  console.block(f'smog_jax.linear_eval: {config_name}', [
      ('features', f'{source.description} (step {source.step:,})'),
      ('mode', f'{config.mode}: {_MODE_TEXT[config.mode]}'),
      ('protocol', protocol),
      ('data', f'{data.dataset}: trained on '
               f'{sources.train_split(data)}, tested on {data.eval_split}'),
      ('workdir', workdir),
      ('full log', console.log_path() or 'on the terminal'),
  ])


def show_result(results: dict[str, Any], workdir: str) -> None:
  """The closing block: the accuracy, where it was written."""
  name = 'kNN' if results['mode'] == 'knn' else 'linear'
  after = ('' if results['mode'] == 'knn' else
           f' after the final epoch ({results["epochs"]})')
  console.block(
      f'Result: {name} top-1 {results["top1"]:.2f} %, top-5 '
      f'{results["top5"]:.2f} % on {results["num_test_examples"]:,} '
      f'test images{after}; '
      f'{console.duration(results["wall_clock_seconds"])}.',
      [('results', os.path.join(workdir, RESULTS_FILE))])


class _EpochLines:
  """Writes the records and shows about ten epoch lines with an ETA."""

  def __init__(self, writer: metrics_lib.MetricsWriter, epochs: int):
    self.writer, self.epochs = writer, epochs
    self.every = max(1, epochs // 10)
    self.progress = console.Progress(epochs)

  def __call__(self, record: dict[str, Any]) -> None:
    self.writer(record)
    epoch = record.get('epoch')
    if epoch is None:
      return
    if not self.progress.started:  # The first epoch compiled.
      self.progress.start(epoch)
    if epoch % self.every == 0 or epoch == self.epochs:
      console.show('epoch %d/%d: loss %.4f, train top-1 %.2f %%, ETA %s',
                   epoch, self.epochs, record['loss'],
                   100 * record['train_top1'], self.progress.eta(epoch))


def run(config: ml_collections.ConfigDict, workdir: str,
        mesh: Mesh | None = None, config_name: str = '') -> dict[str, Any]:
  """Runs `config.mode` and writes metrics.jsonl and results.json.

  Args:
    config: a `configs/linear_eval.py` config.
    workdir: output directory (created).
    mesh: the 1-D `data` mesh (default: every device).
    config_name: how the start-up block names the config.

  Returns:
    The results (also in WORKDIR/results.json), accuracies in percent.
  """
  start = time.time()
  if config.mode not in MODES:
    raise ValueError(f'config.mode={config.mode!r}; choose one of {MODES}.')
  mesh = sharding_lib.make_mesh() if mesh is None else mesh
  workdir = os.fspath(workdir)
  if jax.process_index() == 0:
    tf.io.gfile.makedirs(workdir)
  source = load_feature_source(config)
  config = with_source_preprocessing(config, source)
  data = settings_lib.resolve(config)  # Once, with the backbone's inputs.
  validation.check_folder_labels(
      data, f'smog_jax.linear_eval (mode {config.mode!r})',
      'evaluate a labelled dataset')
  show_start(config, config_name, source, data, workdir)
  # Appended to, never truncated: a resumed evaluation keeps its history.
  writer = metrics_lib.MetricsWriter(workdir)
  log = _EpochLines(writer, config.linear.epochs)
  results = make_evaluator(config, data, workdir, source.module, mesh,
                           log).run(source.variables)
  results.update({k: 100.0 * results[k] for k in ('top1', 'top5')})
  if config.mode == 'knn':
    results.update(k=config.knn.k, temperature=config.knn.temperature)
  results.update(mode=config.mode, pretrained=str(config.pretrained),
                 pretrained_step=int(source.step),
                 dataset=str(config.data.dataset), units='percent',
                 wall_clock_seconds=time.time() - start)
  writer(dict(final=True, **results))
  if jax.process_index() == 0:
    with tf.io.gfile.GFile(os.path.join(workdir, RESULTS_FILE), 'w') as f:
      json.dump({k: jsonl.jsonable(v) for k, v in results.items()}, f,
                indent=2, sort_keys=True)
  show_result(results, workdir)
  return results
