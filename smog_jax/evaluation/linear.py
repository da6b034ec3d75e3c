"""A linear classifier on frozen features (the linear-evaluation protocol).

The head is one `Dense` layer on standardised features: the feature mean and
standard deviation are estimated once, before training, and then frozen, so
the probe needs no BatchNorm and its output is a pure function of its
parameters. Training is SGD with momentum 0.9, a cosine learning-rate decay to
zero over all steps, and weight decay on every head parameter (the torch
`SGD(weight_decay=...)` of the reference).

`fit_linear` is the "fast" protocol: features were extracted once (no
augmentation) and mini-batches of them are drawn, reshuffled every epoch. The
full protocol (a frozen backbone on freshly augmented crops every epoch)
re-uses `ProbeState`, `make_probe_optimizer` and `probe_loss_and_metrics` in
`smog_jax.evaluation.runner`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from smog_jax import sharding as sharding_lib
from smog_jax.evaluation import features as features_lib


@dataclasses.dataclass(frozen=True)
class LinearConfig:
  """Hyper-parameters of the linear probe.

  Attributes:
    epochs: passes over the training features.
    batch_size: global mini-batch size (a multiple of the device count).
    learning_rate: peak learning rate of the cosine schedule.
    momentum: SGD momentum.
    weight_decay: L2 weight decay on the head.
    standardize: standardise the features with the training mean/std.
    seed: initialisation and shuffling seed.
    eval_batch_size: rows per evaluation batch.
  """
  epochs: int = 100
  batch_size: int = 256
  learning_rate: float = 0.3
  momentum: float = 0.9
  weight_decay: float = 1e-6
  standardize: bool = True
  seed: int = 0
  eval_batch_size: int = 1024


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


def make_probe_optimizer(learning_rate: float, total_steps: int,
                         momentum: float = 0.9,
                         weight_decay: float = 0.0
                         ) -> optax.GradientTransformation:
  """SGD(momentum) with cosine decay to zero over `total_steps` and L2 decay."""
  schedule = optax.cosine_decay_schedule(learning_rate, max(1, total_steps))
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(schedule, momentum=momentum))


def feature_statistics(features: np.ndarray, standardize: bool = True,
                       eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
  """Per-dimension mean and std (or zeros and ones when not standardising)."""
  dim = features.shape[-1]
  if not standardize:
    return np.zeros((dim,), np.float32), np.ones((dim,), np.float32)
  features = np.asarray(features, np.float64)
  return (features.mean(0).astype(np.float32),
          (features.std(0) + eps).astype(np.float32))


def init_probe(rng: jax.Array, num_classes: int, mean: np.ndarray,
               std: np.ndarray, tx: optax.GradientTransformation) -> ProbeState:
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
  """`[B]` bool: is the label among the `k` largest logits (k clamped to C)."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1)


def probe_loss_and_metrics(params: Any, state: ProbeState, features: jax.Array,
                           labels: jax.Array, mask: jax.Array
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy over the real (mask True) rows, and train top-1."""
  logits = probe_logits(params, state.mean, state.std, features)
  weights = mask.astype(jnp.float32)
  count = jnp.maximum(weights.sum(), 1.0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  loss = jnp.sum(ce * weights) / count
  top1 = jnp.sum(topk_correct(logits, labels, 1) * weights) / count
  return loss, dict(loss=loss, train_top1=top1)


def probe_train_step(state: ProbeState, features: jax.Array,
                     labels: jax.Array, mask: jax.Array, *,
                     tx: optax.GradientTransformation
                     ) -> tuple[ProbeState, dict[str, jax.Array]]:
  """One SGD step of the head on a (global, sharded) batch of features."""
  grads, metrics = jax.grad(probe_loss_and_metrics, has_aux=True)(
      state.params, state, jax.lax.stop_gradient(features), labels, mask)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1,
                       params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state), metrics


def jit_probe_step(tx: optax.GradientTransformation, mesh: Mesh) -> Callable:
  """`probe_train_step` compiled: state replicated, batch rows over `data`."""
  replicated = sharding_lib.replicated(mesh)
  data = sharding_lib.data_sharded(mesh)
  return jax.jit(functools.partial(probe_train_step, tx=tx),
                 in_shardings=(replicated, data, data, data),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


@jax.jit
def _count_correct(params, mean, std, features, labels, mask):
  logits = probe_logits(params, mean, std, features)
  return (jnp.sum(topk_correct(logits, labels, 1) & mask),
          jnp.sum(topk_correct(logits, labels, 5) & mask))


def _padded_batches(arrays: Mapping[str, np.ndarray], order: np.ndarray,
                    batch_size: int):
  """Global numpy batches over `order`, the last one padded with mask False."""
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    pad = batch_size - len(rows)
    batch = {k: np.concatenate([v[rows], np.zeros((pad,) + v.shape[1:],
                                                   v.dtype)])
             for k, v in arrays.items()}
    batch['mask'] = np.arange(batch_size) < len(rows)
    yield batch


def _round_to_mesh(batch_size: int, mesh: Mesh) -> int:
  return max(mesh.size, -(-batch_size // mesh.size) * mesh.size)


def evaluate_probe(state: ProbeState, features: np.ndarray, labels: np.ndarray,
                   mesh: Mesh, batch_size: int = 1024) -> dict[str, float]:
  """Top-1 / top-5 accuracy (fractions) of the probe on host features."""
  batch_size = _round_to_mesh(min(batch_size, max(1, len(labels))), mesh)
  params, mean, std = features_lib.replicate(
      (state.params, state.mean, state.std), mesh)
  top1 = top5 = 0
  arrays = dict(features=np.asarray(features, np.float32),
                labels=np.asarray(labels, np.int32))
  for batch in _padded_batches(arrays, np.arange(len(labels)), batch_size):
    b = features_lib.shard_global_batch(batch, mesh)
    c1, c5 = _count_correct(params, mean, std, b['features'], b['labels'],
                            b['mask'])
    top1, top5 = top1 + int(c1), top5 + int(c5)
  num = len(labels)
  return dict(top1=top1 / max(num, 1), top5=top5 / max(num, 1),
              num_examples=num)


def fit_linear(train_features: np.ndarray, train_labels: np.ndarray,
               num_classes: int, config: LinearConfig, mesh: Mesh,
               log_fn: Callable[[dict[str, float]], None] | None = None
               ) -> ProbeState:
  """Fits the head on fixed features ("fast" linear evaluation).

  Args:
    train_features: `[N, F]` host features, identical on every host.
    train_labels: `[N]` int labels.
    num_classes: C.
    config: hyper-parameters.
    mesh: the 1-D `data` mesh; mini-batches are split over it.
    log_fn: called after every epoch with `epoch`, `step`, `loss`,
      `train_top1` and `learning_rate`.

  Returns:
    The trained `ProbeState`.
  """
  features = np.asarray(train_features, np.float32)
  labels = np.asarray(train_labels, np.int32)
  num = len(labels)
  batch_size = _round_to_mesh(min(config.batch_size, num), mesh)
  steps_per_epoch = -(-num // batch_size)
  total_steps = config.epochs * steps_per_epoch
  tx = make_probe_optimizer(config.learning_rate, total_steps,
                            config.momentum, config.weight_decay)
  mean, std = feature_statistics(features, config.standardize)
  state = features_lib.replicate(
      init_probe(jax.random.key(config.seed), num_classes, mean, std, tx), mesh)
  step_fn = jit_probe_step(tx, mesh)
  arrays = dict(features=features, labels=labels)
  for epoch in range(config.epochs):
    # Same permutation on every host: a function of (seed, epoch) only.
    order = np.random.default_rng([config.seed, epoch]).permutation(num)
    history, rows = [], []
    for batch in _padded_batches(arrays, order, batch_size):
      b = features_lib.shard_global_batch(batch, mesh)
      state, metrics = step_fn(state, b['features'], b['labels'], b['mask'])
      history.append(metrics)  # Read once per epoch: no per-step host sync.
      rows.append(int(batch['mask'].sum()))
    if log_fn is not None:
      step = (epoch + 1) * steps_per_epoch
      # Weighted by the real rows so the padded last batch counts fairly.
      means = {k: float(np.dot([float(m[k]) for m in history], rows) / num)
               for k in ('loss', 'train_top1')}
      log_fn(dict(epoch=epoch + 1, step=step, **means,
                  learning_rate=float(optax.cosine_decay_schedule(
                      config.learning_rate, max(1, total_steps))(step - 1))))
  return state
