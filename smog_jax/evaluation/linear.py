"""A linear classifier on frozen features (the linear-evaluation protocol).

The head is one `Dense` layer on the features, standardised or raw
(`LinearConfig.standardize`): the feature mean and standard deviation are
estimated once, before training, and frozen, so the probe needs no
BatchNorm; raw features (the reference's ImageNet protocol) are the same
code with mean 0 and std 1, which leave them bit for bit. Training is SGD
with momentum, a cosine learning-rate decay to zero over all steps and
weight decay on every head parameter (the torch `SGD(weight_decay=...)` of
the reference).

`train_probe` is the one training loop: its batches hold fixed features
(`fit_linear`, 'fast') or images a frozen backbone turns into features
inside the step ('linear', `smog_jax.evaluation.evaluators.Linear`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from smog_jax import augment
from smog_jax import random_streams
from smog_jax.evaluation import features as features_lib


@dataclasses.dataclass(frozen=True)
class LinearConfig:
  """Hyper-parameters of the linear probe (configs/linear_eval.py).

  Attributes:
    epochs: passes over the training set.
    batch_size: global mini-batch size (a multiple of the device count).
    learning_rate: peak learning rate of the cosine schedule.
    momentum: SGD momentum.
    weight_decay: L2 weight decay on the head.
    standardize: standardise the features with their training mean/std;
      False: the head trains on the raw features.
    seed: initialisation and shuffling seed.
    eval_batch_size: rows per evaluation batch.
  """
  epochs: int
  batch_size: int
  learning_rate: float
  momentum: float
  weight_decay: float
  standardize: bool
  seed: int
  eval_batch_size: int


class LinearHead(nn.Module):
  """`Dense(num_classes)` with the reference's N(0, 0.01) initialisation."""
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(self.num_classes,
                    kernel_init=nn.initializers.normal(0.01),
                    bias_init=nn.initializers.zeros)(x)


@flax.struct.dataclass
class ProbeState:
  """Everything a resumed probe needs.

  Attributes:
    step: optimiser steps taken.
    params: the head's parameters.
    opt_state: the optimiser state.
    mean: `[F]` feature mean subtracted before the head.
    std: `[F]` feature standard deviation divided by before the head.
  """
  step: jax.Array
  params: Any
  opt_state: optax.OptState
  mean: jax.Array
  std: jax.Array


def probe_optimizer(config: LinearConfig, total_steps: int
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD(momentum) + L2 decay, and its cosine-to-zero learning rate."""
  schedule = optax.cosine_decay_schedule(config.learning_rate,
                                         max(1, total_steps))
  tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                   optax.sgd(schedule, momentum=config.momentum))
  return tx, schedule


def feature_statistics(features: np.ndarray, standardize: bool,
                       eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
  """Per-dimension mean and std (zeros and ones when not standardising)."""
  dim = features.shape[-1]
  if not standardize:
    return np.zeros((dim,), np.float32), np.ones((dim,), np.float32)
  features = np.asarray(features, np.float64)
  return (features.mean(0).astype(np.float32),
          (features.std(0) + eps).astype(np.float32))


def init_probe(rng: jax.Array, num_classes: int, mean: np.ndarray,
               std: np.ndarray, tx: optax.GradientTransformation
               ) -> ProbeState:
  """A fresh head for `[F]`-dimensional features."""
  params = LinearHead(num_classes).init(
      rng, jnp.zeros((1, mean.shape[-1]), jnp.float32))['params']
  return ProbeState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), mean=jnp.asarray(mean),
                    std=jnp.asarray(std))


def probe_logits(params: Any, mean: jax.Array, std: jax.Array,
                 features: jax.Array) -> jax.Array:
  num_classes = params['Dense_0']['bias'].shape[-1]
  return LinearHead(num_classes).apply({'params': params},
                                       (features - mean) / std)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """`[B]` bool: is the label among the `k` largest logits (k <= C)."""
  _, top = jax.lax.top_k(logits, min(k, logits.shape[-1]))
  return jnp.any(top == labels[:, None], axis=-1)


def probe_loss_and_metrics(params: Any, state: ProbeState,
                           features: jax.Array, labels: jax.Array,
                           mask: jax.Array
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy and top-1 over the real (mask True) rows."""
  logits = probe_logits(params, state.mean, state.std, features)
  weights = mask.astype(jnp.float32)
  count = jnp.maximum(weights.sum(), 1.0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  loss = jnp.sum(ce * weights) / count
  top1 = jnp.sum(topk_correct(logits, labels, 1) * weights) / count
  return loss, dict(loss=loss, train_top1=top1, count=weights.sum())


def probe_train_step(state: ProbeState, variables: Any, inputs: jax.Array,
                     labels: jax.Array, mask: jax.Array, *,
                     tx: optax.GradientTransformation,
                     backbone: nn.Module | None = None,
                     spec: augment.AugmentSpec | None = None
                     ) -> tuple[ProbeState, dict[str, jax.Array]]:
  """One SGD step of the head on a global batch.

  `inputs` are features, or uint8 crops for the frozen `backbone`
  (normalised by `spec`, inference mode, with `variables`) when one is
  given.
  """
  features = inputs if backbone is None else features_lib.backbone_features(
      backbone, variables, inputs, spec)
  grads, metrics = jax.grad(probe_loss_and_metrics, has_aux=True)(
      state.params, state, jax.lax.stop_gradient(features), labels, mask)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1,
                       params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state), metrics


def train_probe(state: ProbeState, tx: optax.GradientTransformation,
                schedule: optax.Schedule,
                epoch_batches: Callable[[int], Iterable[dict]], epochs: int,
                mesh: Mesh, *, backbone: nn.Module | None = None,
                variables: Any = None,
                spec: augment.AugmentSpec | None = None, start_epoch: int = 0,
                log: Callable[[dict], None] | None = None,
                log_every: int = 0,
                end_of_epoch: Callable[[int, ProbeState], None] | None = None
                ) -> ProbeState:
  """Trains the head from `start_epoch` to `epochs`: the one probe loop.

  Args:
    state: the head, replicated over `mesh`.
    tx: its optimiser.
    schedule: the learning rate of `tx`, for the logs.
    epoch_batches: `epoch -> batches` with `label`, `mask` and `features`
      (no backbone) or uint8 `image` (with `backbone`), global and sharded.
    epochs: the last epoch.
    mesh: the 1-D `data` mesh.
    backbone: the frozen feature extractor of image batches, if any.
    variables: its variables.
    spec: the normalisation of the images (with `backbone`).
    start_epoch: the first epoch (a resumed run).
    log: receives `{step, learning_rate, loss, train_top1}` every
      `log_every` steps (0: never) and the real-row means of `loss` and
      `train_top1` with `epoch` after each epoch.
    log_every: see `log`.
    end_of_epoch: called with `(epochs done, state)` (e.g. to checkpoint).

  Returns:
    The trained state.
  """
  step_fn = jax.jit(functools.partial(probe_train_step, tx=tx,
                                      backbone=backbone, spec=spec),
                    donate_argnums=0)
  variables = features_lib.replicate(variables or {}, mesh)
  key = 'features' if backbone is None else 'image'
  step = int(state.step)
  for epoch in range(start_epoch, epochs):
    history = []  # Read at log points only: no per-step host sync.
    for batch in epoch_batches(epoch):
      state, metrics = step_fn(state, variables, batch[key], batch['label'],
                               batch['mask'])
      history.append(metrics)
      step += 1
      if log and log_every and step % log_every == 0:
        log(dict(step=step, learning_rate=float(schedule(step - 1)),
                 loss=float(metrics['loss']),
                 train_top1=float(metrics['train_top1'])))
    if log:
      counts = np.array([float(m['count']) for m in history])
      log(dict(epoch=epoch + 1, step=step,
               learning_rate=float(schedule(step - 1)),
               **{k: float(np.dot([float(m[k]) for m in history], counts) /
                           counts.sum()) for k in ('loss', 'train_top1')}))
    if end_of_epoch:
      end_of_epoch(epoch + 1, state)
  return state


def fit_linear(train_features: np.ndarray, train_labels: np.ndarray,
               num_classes: int, config: LinearConfig, mesh: Mesh,
               log_fn: Callable[[dict], None] | None = None) -> ProbeState:
  """Fits the head on fixed features ('fast' linear evaluation).

  Args:
    train_features: `[N, F]` host features, identical on every host.
    train_labels: `[N]` int labels.
    num_classes: C.
    config: hyper-parameters.
    mesh: the 1-D `data` mesh; mini-batches are split over it.
    log_fn: the `log` of `train_probe` (per-epoch records only).

  Returns:
    The trained `ProbeState`.
  """
  arrays = dict(features=np.asarray(train_features, np.float32),
                label=np.asarray(train_labels, np.int32))
  num = len(arrays['label'])
  batch_size = features_lib.round_to_mesh(min(config.batch_size, num), mesh)
  tx, schedule = probe_optimizer(config,
                                 config.epochs * -(-num // batch_size))
  mean, std = feature_statistics(arrays['features'], config.standardize)
  state = features_lib.replicate(init_probe(
      jax.random.key(config.seed), num_classes, mean, std, tx), mesh)

  def epoch_batches(epoch):
    # Same order on every host: a function of (seed, epoch) only.
    order = random_streams.feature_order_rng(config.seed,
                                             epoch).permutation(num)
    return features_lib.array_batches(arrays, order, batch_size, mesh)

  return train_probe(state, tx, schedule, epoch_batches, config.epochs, mesh,
                     log=log_fn)


@jax.jit
def _count_correct(params, mean, std, features, labels, mask):
  logits = probe_logits(params, mean, std, features)
  return (jnp.sum(topk_correct(logits, labels, 1) & mask),
          jnp.sum(topk_correct(logits, labels, 5) & mask))


def evaluate_probe(state: ProbeState, features: np.ndarray,
                   labels: np.ndarray, mesh: Mesh, batch_size: int
                   ) -> dict[str, float]:
  """Top-1 / top-5 accuracy (fractions) of the probe on host features."""
  num = len(labels)
  batch_size = features_lib.round_to_mesh(min(batch_size, max(1, num)), mesh)
  params, mean, std = features_lib.replicate(
      (state.params, state.mean, state.std), mesh)
  arrays = dict(features=np.asarray(features, np.float32),
                label=np.asarray(labels, np.int32))
  top1 = top5 = 0
  for b in features_lib.array_batches(arrays, np.arange(num), batch_size,
                                      mesh):
    c1, c5 = _count_correct(params, mean, std, b['features'], b['label'],
                            b['mask'])
    top1, top5 = top1 + int(c1), top5 + int(c5)
  return dict(top1=top1 / max(num, 1), top5=top5 / max(num, 1),
              num_examples=num)
