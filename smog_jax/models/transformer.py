"""Layers shared by the transformer backbones (ViT, Swin).

Mixed precision: every layer computes in `dtype` with float32 parameters;
LayerNorm statistics and the attention softmax are computed in float32.

Stochastic depth (`DropPath`) is on only when the apply is given a
`'dropout'` rng: the train step gives one to the online network and none to
the target network, bank fill or evaluation, which therefore run the whole
network (the reference: drop path 0.2 online, 0 on the target).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

DROPOUT_RNG = 'dropout'

# Parameters that are tables rather than weights: like biases and norms, they
# get no weight decay (smog_jax/optim.py), as in the Swin and DeiT recipes.
POSITION_EMBEDDING = 'position_embedding'
CLASS_TOKEN = 'class_token'
RELATIVE_POSITION_TABLE = 'relative_position_table'
NO_WEIGHT_DECAY = (POSITION_EMBEDDING, CLASS_TOKEN, RELATIVE_POSITION_TABLE)

# ViT and Swin initialise weights and tables from N(0, 0.02) truncated at 2
# standard deviations (in units of the standard deviation).
trunc_normal = nn.initializers.truncated_normal(0.02)


def layer_norm(dtype: Any, name: str | None = None,
               epsilon: float = 1e-5) -> nn.LayerNorm:
  """LayerNorm; 1e-5 is PyTorch's (and Swin's) epsilon, ViT's is 1e-6."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, name=name)


def dense(features: int, dtype: Any, use_bias: bool = True,
          name: str | None = None) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype,
                  kernel_init=trunc_normal, name=name)


class DropPath(nn.Module):
  """Drops the whole residual branch of an example with probability `rate`.

  Kept branches are scaled by 1 / (1 - rate), so the expectation is unchanged.
  """
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.rate == 0.0 or not self.has_rng(DROPOUT_RNG):
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng(DROPOUT_RNG), keep, shape)
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class MLP(nn.Module):
  """Linear - GELU - Linear, hidden width `ratio` x the input width."""
  ratio: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = dense(int(width * self.ratio), self.dtype)(x)
    x = nn.gelu(x, approximate=False)
    return dense(width, self.dtype)(x)


class SelfAttention(nn.Module):
  """Multi-head self-attention over the token axis, with an optional additive
  bias `[heads, T, T]` or `[W, heads, T, T]` and keep-mask `[W, 1, T, T]`."""
  num_heads: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array | None = None,
               mask: jax.Array | None = None) -> jax.Array:
    *batch, tokens, width = x.shape
    head_dim = width // self.num_heads
    qkv = dense(3 * width, self.dtype, name='qkv')(x)
    qkv = qkv.reshape(*batch, tokens, 3, self.num_heads, head_dim)
    q, k, v = (jnp.moveaxis(qkv[..., i, :, :], -2, -3) for i in range(3))
    logits = (q * head_dim**-0.5) @ jnp.swapaxes(k, -1, -2)
    logits = logits.astype(jnp.float32)
    if bias is not None:
      logits = logits + bias
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.moveaxis(weights @ v, -3, -2).reshape(*batch, tokens, width)
    return dense(width, self.dtype, name='proj')(out)


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
  """Stochastic depth: from 0 at the first block to `rate` at the last."""
  if num_blocks == 1:
    return [rate]
  return [rate * i / (num_blocks - 1) for i in range(num_blocks)]
