"""The SMoG projector and predictor heads and the online/target network.

Spec ("Networks"):
  projector: Linear(d, 2048) - BN - ReLU - Linear(2048, 128) - BN(no scale/bias)
  predictor: Linear(128, 2048) - BN - ReLU - Linear(2048, 128)
Swin-T uses GELU (exact, as PyTorch's `nn.GELU()`) and feature dim 256: both
are attributes here.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLPHead(nn.Module):
  """Linear - BN - act - Linear [- BN without scale and bias]."""
  hidden_dim: int
  output_dim: int
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  output_norm: bool = False
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    norm = lambda **kw: nn.BatchNorm(use_running_average=not train,
                                     momentum=self.bn_momentum, epsilon=1e-5,
                                     dtype=self.dtype, **kw)
    x = nn.Dense(self.hidden_dim, dtype=self.dtype)(x)
    x = self.activation(norm()(x))
    x = nn.Dense(self.output_dim, dtype=self.dtype)(x)
    if self.output_norm:
      x = norm(use_scale=False, use_bias=False)(x)
    return x.astype(jnp.float32)


class SMoGNetwork(nn.Module):
  """Backbone -> projector [-> predictor].

  The online network calls it with `with_predictor=True`; the target network
  with `with_predictor=False`, so its parameters are exactly
  `{'backbone', 'projector'}` and never contain a predictor.
  """
  backbone: nn.Module
  projector: MLPHead
  predictor: MLPHead
  # The train step runs a ResNet backbone on the large and small crops in
  # one call, its BatchNorm statistics pooled (`config.model.backbone_bn`,
  # the reference's statistics).
  pooled_backbone_bn: bool = False

  def __call__(self, images: jax.Array, train: bool = True,
               with_predictor: bool = True) -> dict[str, jax.Array]:
    """Returns raw (un-normalised) `features`, `projection` [, `prediction`]."""
    return self.heads(self.features(images, train=train), train=train,
                      with_predictor=with_predictor)

  def features(self, images: jax.Array, train: bool = True) -> jax.Array:
    """The backbone alone: pooled `[N, F]` features (ResNets: a tuple of
    them for a tuple of image batches, BatchNorm pooled over the tuple)."""
    return self.backbone(images, train=train)

  def heads(self, features: jax.Array, train: bool = True,
            with_predictor: bool = True) -> dict[str, jax.Array]:
    """The heads on `features [N, F]`; in training their BatchNorm
    statistics are over all N rows (the train step passes every crop of a
    branch at once)."""
    outputs = {'features': features,
               'projection': self.projector(features, train=train)}
    if with_predictor:
      outputs['prediction'] = self.predictor(outputs['projection'],
                                             train=train)
    return outputs
