"""Evaluators: small plug-ins with one `run(variables)` contract.

An evaluator is built once from the binary's data settings (`DataSettings`:
what to evaluate on), a mesh and a frozen backbone module;
`run(variables)` evaluates the backbone with those variables and returns a
dict of metrics (accuracies as fractions). The pre-training kNN monitor
(`smog_jax.trainer.knn_monitor`) and `python -m smog_jax.linear_eval` use
these classes, so they share feature extraction, kNN and the probe loop.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh

from smog_jax import checkpointing
from smog_jax import sharding
from smog_jax import data as data_lib
from smog_jax.data import sources
from smog_jax.evaluation import features as features_lib
from smog_jax.evaluation import knn as knn_lib
from smog_jax.evaluation import linear as linear_lib


class Evaluator:
  """Evaluation data, and features of its splits."""

  def __init__(self, data: data_lib.DataSettings, mesh: Mesh,
               backbone: nn.Module, num_classes: int | None = None):
    """`num_classes` None: one more than the largest label seen."""
    self.data, self.mesh, self.backbone = data, mesh, backbone
    self.spec = self.data.augment_spec  # Normalises the crops on the device.
    self.num_classes = num_classes

  def features(self, variables: Any, split: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """`(features [N, F], labels [N])` of `split`'s test crops, every host."""
    feats, labels = features_lib.extract_features(
        self.backbone, variables,
        data_lib.make_eval_iterator(self.data, self.mesh, split), self.mesh,
        self.spec)
    if self.num_classes is not None and labels.size and (
        labels.min() < 0 or labels.max() >= self.num_classes):
      raise ValueError(f'{split} labels span [{labels.min()}, '
                       f'{labels.max()}] but config.num_classes='
                       f'{self.num_classes}.')
    return feats, labels

  def fixed_features(self, variables: Any) -> list[tuple[np.ndarray, ...]]:
    """Un-augmented features of the training and the test split."""
    return [self.features(variables, split) for split in
            (sources.train_split(self.data), self.data.eval_split)]

  def classes(self, *labels: np.ndarray) -> int:
    return self.num_classes or int(max(y.max() for y in labels)) + 1

  def run(self, variables: Any) -> dict[str, Any]:
    """The metrics of the backbone with `variables` (`{'params', ...}`)."""
    raise NotImplementedError


class Knn(Evaluator):
  """Weighted kNN (k, temperature) of test features among training ones."""

  def __init__(self, data, mesh, backbone, num_classes=None, *, k: int,
               temperature: float):
    super().__init__(data, mesh, backbone, num_classes)
    self.k, self.temperature = k, temperature

  def run(self, variables):
    (train_x, train_y), (test_x, test_y) = self.fixed_features(variables)
    acc = knn_lib.knn_accuracy(
        train_x, train_y, test_x, test_y, self.classes(train_y, test_y),
        k=self.k, temperature=self.temperature, mesh=self.mesh)
    return dict(acc, num_train_examples=len(train_y),
                num_test_examples=len(test_y), feature_dim=train_x.shape[1])


class FastLinear(Evaluator):
  """The probe fitted on the fixed features of the training split."""

  def __init__(self, data, mesh, backbone, num_classes, *,
               linear: linear_lib.LinearConfig,
               log: Callable[[dict], None] | None = None):
    super().__init__(data, mesh, backbone, num_classes)
    self.linear, self.log = linear, log

  def run(self, variables):
    (train_x, train_y), (test_x, test_y) = self.fixed_features(variables)
    probe = linear_lib.fit_linear(train_x, train_y,
                                  self.classes(train_y, test_y),
                                  self.linear, self.mesh, log_fn=self.log)
    acc = linear_lib.evaluate_probe(probe, test_x, test_y, self.mesh,
                                    self.linear.eval_batch_size)
    return dict(top1=acc['top1'], top5=acc['top5'], epochs=self.linear.epochs,
                num_train_examples=len(train_y),
                num_test_examples=len(test_y), feature_dim=train_x.shape[1])


class Linear(Evaluator):
  """The reference protocol: the probe on freshly augmented crops.

  The frozen backbone (inference-mode BN) runs inside every step on random
  resized crops and flips keyed by the epoch; with `linear.standardize` the
  feature statistics come from the first `standardize_batches` batches,
  without it the head sees the raw features (mean 0, std 1). The head is
  checkpointed every `checkpoint_every` epochs into WORKDIR/checkpoints,
  and a restarted run resumes from the newest checkpoint with the
  statistics it holds (the head was trained on them), so a run started
  before `standardize` was turned off finishes as it began.
  """

  def __init__(self, data, mesh, backbone, num_classes, *,
               linear: linear_lib.LinearConfig, workdir: str,
               standardize_batches: int, checkpoint_every: int,
               log: Callable[[dict], None] | None = None, log_every: int = 0):
    super().__init__(data, mesh, backbone, num_classes)
    self.linear, self.workdir, self.log = linear, workdir, log
    self.standardize_batches = standardize_batches
    self.checkpoint_every, self.log_every = checkpoint_every, log_every
    # The head's training batch is an augmented evaluation batch.
    self.train_data = dataclasses.replace(data,
                                          eval_batch_size=linear.batch_size)

  def _train_batches(self, epoch: int):
    return data_lib.make_eval_iterator(
        self.train_data, self.mesh, sources.train_split(self.data),
        'linear_train', epoch)

  def _feature_dim(self, variables) -> int:
    size, channels = self.data.image_size, self.data.channels
    images = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    return jax.eval_shape(lambda v, x: self.backbone.apply(
        v, x, train=False), variables, images).shape[-1]

  def run(self, variables):
    lin, mesh = self.linear, self.mesh
    num_train = sources.num_examples(self.data,
                                     sources.train_split(self.data))
    tx, schedule = linear_lib.probe_optimizer(
        lin, lin.epochs * -(-num_train // lin.batch_size))
    dim = self._feature_dim(variables)
    state = linear_lib.init_probe(
        jax.random.key(lin.seed),
        self.num_classes or sources.num_classes(self.data),
        np.zeros((dim,), np.float32), np.ones((dim,), np.float32), tx)
    manager = checkpointing.make_manager(self.workdir, max_to_keep=2,
                                         item_names=('state',))
    start_epoch = manager.latest_step() or 0
    if start_epoch:
      abstract = checkpointing.abstract_like(state,
                                             sharding.replicated(mesh))
      state = manager.restore(start_epoch, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))['state']
      logging.info('Resumed the linear head at epoch %d.', start_epoch)
    elif lin.standardize:
      first = itertools.islice(self._train_batches(0),
                               self.standardize_batches)
      feats, _ = features_lib.extract_features(self.backbone, variables,
                                               first, mesh, self.spec)
      mean, std = linear_lib.feature_statistics(feats, lin.standardize)
      state = features_lib.replicate(
          state.replace(mean=jnp.asarray(mean), std=jnp.asarray(std)), mesh)
    else:
      state = features_lib.replicate(state, mesh)

    def save(epochs_done, state):
      if epochs_done % self.checkpoint_every == 0 or epochs_done == lin.epochs:
        manager.save(epochs_done, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state)))

    state = linear_lib.train_probe(
        state, tx, schedule, self._train_batches, lin.epochs, mesh,
        backbone=self.backbone, variables=variables, spec=self.spec,
        start_epoch=start_epoch,
        log=self.log, log_every=self.log_every, end_of_epoch=save)
    manager.wait_until_finished()
    manager.close()
    test_x, test_y = self.features(variables, self.data.eval_split)
    acc = linear_lib.evaluate_probe(state, test_x, test_y, mesh,
                                    lin.eval_batch_size)
    return dict(top1=acc['top1'], top5=acc['top5'], epochs=lin.epochs,
                steps=int(state.step), num_train_examples=num_train,
                num_test_examples=len(test_y), feature_dim=dim)
