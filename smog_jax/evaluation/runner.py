"""The linear-evaluation / kNN run behind `python -m smog_jax.linear_eval`.

Modes (`config.mode`):
  'linear': the reference protocol. The frozen backbone (inference-mode BN)
    runs on freshly augmented training crops (random resized crop + flip,
    keyed by epoch) every step; the linear head is trained with SGD momentum,
    cosine decay and weight decay; test images are centre-cropped. Checkpointed
    every `checkpoint_every_epochs` into WORKDIR/checkpoints; a restarted run
    resumes from the newest checkpoint.
  'fast': features of the un-augmented training and test sets are extracted
    once; the head is fitted on them (`linear.fit_linear`).
  'knn': weighted kNN (k, temperature) on the same fixed features.

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
from typing import Any, Callable, Iterator, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh

from smog_jax import checkpointing
from smog_jax import export as export_lib
from smog_jax import models
from smog_jax import sharding as sharding_lib
from smog_jax.evaluation import features as features_lib
from smog_jax.evaluation import knn as knn_lib
from smog_jax.evaluation import linear as linear_lib

MODES = ('linear', 'fast', 'knn')
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
# Preprocessing fields a pretrained backbone imposes on the evaluation data:
# it only understands inputs normalised (and with the channel count) as it
# was trained; the image size stays the evaluation dataset's.
INHERITED_DATA_FIELDS = ('mean', 'std', 'channels')


class EvalData(Protocol):
  """Where evaluation batches come from (default: `smog_jax.data`)."""

  def iterator(self, config: ml_collections.ConfigDict, mesh: Mesh,
               split: str, mode: str, epoch: int) -> Iterator[dict]:
    """Batches as `smog_jax.data.make_eval_iterator`."""

  def num_examples(self, config: ml_collections.ConfigDict,
                   split: str) -> int:
    """Examples in `split` (after any slice in its name)."""


class TfdsEvalData:
  """`EvalData` over the project's tf.data pipelines."""

  def iterator(self, config, mesh, split, mode, epoch):
    from smog_jax import data  # Lazy: TensorFlow is heavy and host-only.
    return data.make_eval_iterator(config, mesh, split, mode, epoch=epoch)

  def num_examples(self, config, split):
    from smog_jax.data import settings, sources
    return sources.num_examples(settings.resolve(config), split, None)


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
  pretrained = config.get('pretrained', None)
  if not pretrained:
    raise ValueError("Set --config.pretrained to a pre-training workdir, an "
                     "exported backbone directory, 'random' or 'pixels'.")
  if pretrained == 'pixels':
    return FeatureSource(features_lib.PixelFeatures(), {}, 0, 'pixels', None)
  if pretrained == 'random':
    module = models.build_backbone(config.model)
    size, channels = _image_shape(config)
    variables = jax.jit(functools.partial(module.init, train=False))(
        jax.random.key(config.seed), jnp.zeros((1, size, size, channels)))
    return FeatureSource(module, jax.device_get(variables), 0, 'random', None)
  loaded = export_lib.load_backbone_info(pretrained)
  return FeatureSource(loaded.module, loaded.variables, loaded.step,
                       checkpointing.absolute(pretrained), loaded.preprocessing)


def _image_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  from smog_jax.data import settings
  resolved = settings.resolve(config)
  return resolved.image_size, resolved.channels


def with_source_preprocessing(config: ml_collections.ConfigDict,
                              source: FeatureSource
                              ) -> ml_collections.ConfigDict:
  """`config` with the backbone's normalisation (if inherit_preprocessing)."""
  if source.preprocessing is None or not config.get('inherit_preprocessing',
                                                    True):
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  with config.unlocked():
    for name in INHERITED_DATA_FIELDS:
      config.data[name] = source.preprocessing[name]
  return config


def train_split(config: ml_collections.ConfigDict) -> str:
  """The training split, restricted to `data.train_slice` examples if set."""
  split = config.data.get('train_split', None) or 'train'
  n = config.data.get('train_slice', None)
  return f'{split}[:{int(n)}]' if n else split


def test_split(config: ml_collections.ConfigDict) -> str:
  from smog_jax.data import settings
  return settings.resolve(config).eval_split


class MetricsLog:
  """Appends one JSON object per call to WORKDIR/metrics.jsonl (process 0).

  Appending (not truncating) keeps the history of a resumed run whole.
  """

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, METRICS_FILE)
    self._enabled = jax.process_index() == 0

  def __call__(self, record: dict[str, Any]) -> None:
    logging.info('%s', ' '.join(f'{k}={v}' for k, v in record.items()))
    if self._enabled:
      with open(self._path, 'a') as f:
        f.write(json.dumps(_jsonable(record)) + '\n')


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
  return {k: (v.item() if isinstance(v, (np.generic, np.ndarray)) else v)
          for k, v in record.items()}


def _percent(metrics: dict[str, float]) -> dict[str, float]:
  return {k: 100.0 * v for k, v in metrics.items()}


def linear_config(config: ml_collections.ConfigDict) -> linear_lib.LinearConfig:
  lin = config.linear
  return linear_lib.LinearConfig(
      epochs=int(lin.epochs), batch_size=int(config.batch_size),
      learning_rate=float(lin.learning_rate), momentum=float(lin.momentum),
      weight_decay=float(lin.weight_decay),
      standardize=bool(lin.standardize), seed=int(config.seed),
      eval_batch_size=int(config.data.get('eval_batch_size', None) or
                          config.batch_size))


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'{what} labels span [{labels.min()}, {labels.max()}] but '
                     f'config.num_classes={num_classes}.')


def _fixed_features(config, source, mesh, data: EvalData):
  """Un-augmented features of the training and test splits, once."""
  out = []
  for split in (train_split(config), test_split(config)):
    feats, labels = features_lib.extract_features(
        source.module, source.variables,
        data.iterator(config, mesh, split, 'test', 0), mesh)
    _check_labels(labels, config.num_classes, split)
    logging.info('Extracted %s features of %r.', feats.shape, split)
    out.append((feats, labels))
  return out


def _feature_dim(config: ml_collections.ConfigDict,
                 source: FeatureSource) -> int:
  """F of the backbone on this config's images (shape inference only)."""
  size, channels = _image_shape(config)
  images = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  return jax.eval_shape(
      lambda v, x: source.module.apply(v, x, train=False), source.variables,
      images).shape[-1]


def _full_step(state: linear_lib.ProbeState, variables: Any,
               images: jax.Array, labels: jax.Array, mask: jax.Array, *,
               backbone: nn.Module, tx: optax.GradientTransformation):
  features = backbone.apply(variables, images, train=False)
  return linear_lib.probe_train_step(state, features, labels, mask, tx=tx)


def _probe_manager(workdir: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      checkpointing.checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
      item_names=('state',))


def _head_batch_config(config: ml_collections.ConfigDict
                       ) -> ml_collections.ConfigDict:
  """`config` whose eval iterator yields `config.batch_size` rows: the head's
  training batch in 'linear' mode is an augmented eval-iterator batch."""
  config = ml_collections.ConfigDict(config.to_dict())
  with config.unlocked():
    config.data.eval_batch_size = int(config.batch_size)
  return config


def _estimate_statistics(config, source, mesh, data: EvalData,
                         variables) -> tuple[np.ndarray, np.ndarray]:
  """Feature mean/std from the first batches of augmented training crops."""
  batches = []
  limit = int(config.linear.get('standardize_batches', 20))
  for i, batch in enumerate(data.iterator(config, mesh, train_split(config),
                                          'linear_train', 0)):
    if i >= limit:
      break
    feats = features_lib.batch_features(source.module, variables,
                                        batch['image'], mesh)
    keep = features_lib.to_host(batch['mask']).astype(bool)
    batches.append(features_lib.to_host(feats)[keep])
  return linear_lib.feature_statistics(np.concatenate(batches),
                                       bool(config.linear.standardize))


def run_full_linear(config: ml_collections.ConfigDict, workdir: str,
                    source: FeatureSource, mesh: Mesh, data: EvalData,
                    log: Callable[[dict], None]) -> dict[str, Any]:
  """The 'linear' mode: augmented crops through the frozen backbone."""
  lin = linear_config(config)
  split = train_split(config)
  num_train = data.num_examples(config, split)
  train_config = _head_batch_config(config)
  batch_size = lin.batch_size
  sharding_lib.check_divisible(batch_size, mesh, 'batch_size')
  steps_per_epoch = -(-num_train // batch_size)  # Last batch padded.
  total_steps = lin.epochs * steps_per_epoch
  tx = linear_lib.make_probe_optimizer(lin.learning_rate, total_steps,
                                       lin.momentum, lin.weight_decay)
  replicated = sharding_lib.replicated(mesh)
  data_sharding = sharding_lib.data_sharded(mesh)
  variables = features_lib.replicate(source.variables, mesh)

  manager = _probe_manager(workdir)
  feature_dim = _feature_dim(config, source)
  template = linear_lib.init_probe(
      jax.random.key(lin.seed), config.num_classes,
      np.zeros((feature_dim,), np.float32), np.ones((feature_dim,), np.float32),
      tx)
  start_epoch = manager.latest_step() or 0
  if start_epoch:
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        template)
    state = manager.restore(start_epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))['state']
    logging.info('Resumed the linear head at epoch %d.', start_epoch)
  else:
    mean, std = _estimate_statistics(train_config, source, mesh, data,
                                     variables)
    state = features_lib.replicate(
        template.replace(mean=jnp.asarray(mean), std=jnp.asarray(std)), mesh)

  step_fn = jax.jit(
      functools.partial(_full_step, backbone=source.module, tx=tx),
      in_shardings=(replicated, replicated, data_sharding, data_sharding,
                    data_sharding),
      out_shardings=(replicated, replicated), donate_argnums=(0,))
  schedule = optax.cosine_decay_schedule(lin.learning_rate,
                                         max(1, total_steps))
  log_every = int(config.get('log_every_steps', 100))
  ckpt_every = int(config.get('checkpoint_every_epochs', 1))
  step = int(state.step)
  for epoch in range(start_epoch, lin.epochs):
    history = []
    for batch in data.iterator(train_config, mesh, split, 'linear_train',
                               epoch):
      state, metrics = step_fn(state, variables, batch['image'],
                               batch['label'], batch['mask'])
      history.append(metrics)  # Read at log points only: no per-step sync.
      step += 1
      if log_every and step % log_every == 0:
        log(dict(step=step, epoch=step / steps_per_epoch,
                 learning_rate=float(schedule(step - 1)),
                 **{k: float(v) for k, v in metrics.items()}))
    log(dict(step=step, epoch=epoch + 1,
             **{f'epoch_{k}': float(np.mean([float(m[k]) for m in history]))
                for k in ('loss', 'train_top1')}))
    if (epoch + 1) % ckpt_every == 0 or epoch + 1 == lin.epochs:
      manager.save(epoch + 1, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  manager.close()

  test_feats, test_labels = features_lib.extract_features(
      source.module, variables,
      data.iterator(config, mesh, test_split(config), 'test', 0), mesh)
  _check_labels(test_labels, config.num_classes, 'test')
  result = linear_lib.evaluate_probe(state, test_feats, test_labels, mesh,
                                     lin.eval_batch_size)
  return dict(_percent(dict(top1=result['top1'], top5=result['top5'])),
              num_test_examples=result['num_examples'],
              num_train_examples=num_train, feature_dim=int(feature_dim),
              epochs=lin.epochs, steps=int(state.step))


def run(config: ml_collections.ConfigDict, workdir: str,
        data: EvalData | None = None, mesh: Mesh | None = None
        ) -> dict[str, Any]:
  """Runs `config.mode` and writes metrics.jsonl and results.json.

  Args:
    config: a `configs/linear_eval.py` config.
    workdir: output directory (created).
    data: the batch source (default: the tf.data pipelines).
    mesh: the 1-D `data` mesh (default: every device).

  Returns:
    The results (also in WORKDIR/results.json), accuracies in percent.
  """
  start = time.time()
  if config.mode not in MODES:
    raise ValueError(f'config.mode={config.mode!r}; choose one of {MODES}.')
  data = TfdsEvalData() if data is None else data
  mesh = sharding_lib.make_mesh() if mesh is None else mesh
  workdir = os.fspath(workdir)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
  source = load_feature_source(config)
  config = with_source_preprocessing(config, source)
  log = MetricsLog(workdir)

  if config.mode == 'linear':
    results = run_full_linear(config, workdir, source, mesh, data, log)
  else:
    (train_x, train_y), (test_x, test_y) = _fixed_features(
        config, source, mesh, data)
    common = dict(num_test_examples=int(len(test_y)),
                  num_train_examples=int(len(train_y)),
                  feature_dim=int(train_x.shape[1]))
    if config.mode == 'knn':
      acc = knn_lib.knn_accuracy(train_x, train_y, test_x, test_y,
                                 config.num_classes, k=int(config.knn.k),
                                 temperature=float(config.knn.temperature),
                                 mesh=mesh)
      results = dict(_percent(acc), k=int(config.knn.k),
                     temperature=float(config.knn.temperature), **common)
    else:
      lin = linear_config(config)
      probe = linear_lib.fit_linear(train_x, train_y, config.num_classes, lin,
                                    mesh, log_fn=log)
      acc = linear_lib.evaluate_probe(probe, test_x, test_y, mesh,
                                      lin.eval_batch_size)
      results = dict(_percent(dict(top1=acc['top1'], top5=acc['top5'])),
                     epochs=lin.epochs, **common)

  results.update(mode=config.mode, pretrained=str(config.pretrained),
                 pretrained_step=int(source.step),
                 dataset=str(config.data.dataset), units='percent',
                 wall_clock_seconds=time.time() - start)
  log(dict(final=True, **results))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RESULTS_FILE), 'w') as f:
      json.dump(_jsonable(results), f, indent=2, sort_keys=True)
  return results
