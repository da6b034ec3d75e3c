"""In-memory stand-ins for tests and smoke runs: data and a pre-training run.

`ArrayEvalData` serves numpy arrays through the `runner.EvalData` interface;
`write_fake_pretraining_workdir` saves a freshly initialised SMoG
`TrainState` exactly as the pre-training loop does (smog_jax.checkpointing),
so the evaluation and export paths can be exercised without a real run.
"""

from __future__ import annotations

import re
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from smog_jax import checkpointing
from smog_jax import models
from smog_jax import train_state as train_state_lib
from smog_jax.evaluation import features as features_lib

_SLICE = re.compile(r'^(\w+)(?:\[:(\d+)\])?$')
TINY_BACKBONE = 'tiny_cnn'


class TinyCNN(nn.Module):
  """Conv-BN-ReLU-pool: a backbone that compiles in a blink, for tests.

  It has both params and BN statistics, so it exercises the same variable
  handling as a ResNet.
  """
  features: int = 8

  @property
  def num_features(self) -> int:
    return self.features

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), (2, 2), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return jnp.mean(x, axis=(1, 2))


def register_tiny_backbone() -> None:
  """Makes `config.model.backbone = 'tiny_cnn'` buildable (idempotent)."""
  models.BACKBONES.setdefault(
      TINY_BACKBONE, lambda cfg: TinyCNN(int(cfg.get('width', 8))))


class ArrayEvalData:
  """`EvalData` over `{split: (images [N,S,S,C] normalised, labels [N])}`.

  Split names may carry a `[:n]` slice. 'linear_train' shuffles by
  `(seed, epoch)` and flips images horizontally at random (a cheap stand-in
  for random resized crop + flip).
  """

  def __init__(self, splits: dict[str, tuple[np.ndarray, np.ndarray]]):
    self._splits = splits

  def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    match = _SLICE.match(split)
    if not match or match.group(1) not in self._splits:
      raise KeyError(f'Unknown split {split!r}.')
    images, labels = self._splits[match.group(1)]
    n = int(match.group(2)) if match.group(2) else len(labels)
    return images[:n], labels[:n]

  def num_examples(self, config: ml_collections.ConfigDict, split: str) -> int:
    del config
    return len(self._arrays(split)[1])

  def iterator(self, config: ml_collections.ConfigDict, mesh: Mesh, split: str,
               mode: str, epoch: int) -> Iterator[dict]:
    images, labels = self._arrays(split)
    index = np.arange(len(labels))
    if mode == 'linear_train':
      rng = np.random.default_rng([int(config.seed), epoch])
      index = rng.permutation(len(labels))
      flip = rng.random(len(labels)) < 0.5
      images = np.where(flip[:, None, None, None], images[index, :, ::-1],
                        images[index])
      labels = labels[index]
    elif mode != 'test':
      raise ValueError(f'Unknown mode {mode!r}.')
    batch = int(config.data.get('eval_batch_size', None) or config.batch_size)
    return features_lib.iterate_arrays(images, labels, batch, mesh,
                                       indices=index)


def fake_pretraining_config(model: ml_collections.ConfigDict,
                            image_size: int, channels: int = 1,
                            dataset: str = 'fashion_mnist'
                            ) -> ml_collections.ConfigDict:
  """A minimal pre-training config: what evaluation and export read."""
  from smog_jax.data import default_data_config
  data = default_data_config(dataset)
  data.image_size = image_size
  data.channels = channels
  return ml_collections.ConfigDict(dict(
      model=model, data=data, batch_size=16, seed=0,
      num_heads=1, num_groups=8))


def write_fake_pretraining_workdir(
    workdir: str, config: ml_collections.ConfigDict, seed: int = 0,
    step: int = 7) -> train_state_lib.TrainState:
  """Saves a random SMoG TrainState (with non-trivial BN statistics).

  Returns:
    The saved state (host arrays), to compare the loaded backbone against.
  """
  network = models.build_network(config.model)
  size, channels = config.data.image_size, config.data.channels
  state = train_state_lib.create_train_state(
      jax.random.key(seed), network, optax.sgd(0.1), (size, size, channels),
      num_heads=config.num_heads, num_groups=config.num_groups)
  # Random running statistics, so that a loader that dropped or mixed them
  # up would change the features.
  rng = np.random.default_rng(seed)
  stats = jax.tree.map_with_path(
      lambda path, x: _random_statistic(rng, path[-1].key, x.shape),
      jax.device_get(state.batch_stats))
  state = state.replace(step=np.asarray(step, np.int32), batch_stats=stats)
  with checkpointing.make_manager(workdir, async_save=False) as manager:
    checkpointing.save(manager, state, config, force=True)
    manager.wait_until_finished()
  return jax.device_get(state)


def _random_statistic(rng: np.random.Generator, name: str,
                      shape: tuple[int, ...]) -> np.ndarray:
  """Plausible BN running statistics: small means, variances near 1."""
  if name == 'var':
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)
  return (0.1 * rng.normal(size=shape)).astype(np.float32)
