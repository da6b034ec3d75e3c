"""Vision Transformer backbones (Dosovitskiy et al. 2021): ViT-S/16, ViT-B/16.

image -> 16x16 patches -> linear embedding (+ class token, + learned
position embedding) -> `depth` pre-norm encoder blocks -> LayerNorm -> the
class token (or the mean of the patch tokens): `[B, embed_dim]` features.

Position embeddings are learned for the `base_image_size` grid (14 x 14 at
224 px) and resized bicubically to other grids, e.g. 6 x 6 for the 96 px
multi-crop views; the class token's embedding is not resized.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from smog_jax.models import transformer as tfm


class EncoderBlock(nn.Module):
  """x + DropPath(MSA(LN(x))), then x + DropPath(MLP(LN(x)))."""
  num_heads: int
  mlp_ratio: float
  drop_path: float
  dtype: Any
  layer_norm_epsilon: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = lambda: tfm.layer_norm(self.dtype, epsilon=self.layer_norm_epsilon)
    y = tfm.SelfAttention(self.num_heads, self.dtype)(norm()(x))
    x = x + tfm.DropPath(self.drop_path)(y)
    y = tfm.MLP(self.mlp_ratio, self.dtype)(norm()(x))
    return x + tfm.DropPath(self.drop_path)(y)


class VisionTransformer(nn.Module):
  """ViT trunk: images `[B, H, W, C]` -> `[B, embed_dim]`.

  Attributes:
    patch_size: side of a patch (16).
    embed_dim: token width (384 ViT-S, 768 ViT-B).
    depth: number of encoder blocks (12).
    num_heads: attention heads (6 ViT-S, 12 ViT-B).
    mlp_ratio: MLP hidden width / embed_dim (4).
    pooling: 'cls' (the class token) or 'mean' (mean of the patch tokens).
    base_image_size: the side the position table is learned for (224).
    drop_path_rate: stochastic depth of the last block.
    remat: rematerialise each block in the backward pass.
    dtype: computation dtype (parameters stay float32).
    layer_norm_epsilon: of every LayerNorm; 1e-6 as the original ViT,
      torchvision and timm (1e-5 before 2026-12-06).
  """
  patch_size: int = 16
  embed_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  pooling: str = 'cls'
  base_image_size: int = 224
  drop_path_rate: float = 0.0
  remat: bool = False
  dtype: Any = jnp.float32
  layer_norm_epsilon: float = 1e-6

  @property
  def num_features(self) -> int:
    return self.embed_dim

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    del train  # No BatchNorm; drop path follows the 'dropout' rng.
    if self.pooling not in ('cls', 'mean'):
      raise ValueError(f"Unknown ViT pooling {self.pooling!r}; use 'cls' or "
                       "'mean'.")
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), (p, p), padding='VALID',
                dtype=self.dtype, name='patch_embedding')(x.astype(self.dtype))
    batch, h, w, dim = x.shape
    grid = self.base_image_size // p
    pos = self.param(tfm.POSITION_EMBEDDING, tfm.trunc_normal,
                     (1 + grid * grid, dim))
    pos_cls, pos_grid = pos[:1], pos[1:].reshape(grid, grid, dim)
    if (h, w) != (grid, grid):
      pos_grid = jax.image.resize(pos_grid, (h, w, dim), 'bicubic')
    cls = self.param(tfm.CLASS_TOKEN, nn.initializers.zeros, (1, dim))
    tokens = jnp.concatenate([
        jnp.broadcast_to(cls + pos_cls, (batch, 1, dim)).astype(self.dtype),
        (x + pos_grid.astype(self.dtype)).reshape(batch, h * w, dim)], axis=1)

    block = nn.remat(EncoderBlock) if self.remat else EncoderBlock
    for i, rate in enumerate(tfm.drop_path_rates(self.drop_path_rate,
                                                 self.depth)):
      tokens = block(self.num_heads, self.mlp_ratio, rate, self.dtype,
                     self.layer_norm_epsilon, name=f'block{i}')(tokens)
    tokens = tfm.layer_norm(self.dtype, name='norm',
                            epsilon=self.layer_norm_epsilon)(tokens)
    features = tokens[:, 0] if self.pooling == 'cls' else jnp.mean(
        tokens[:, 1:], axis=1)
    return features.astype(jnp.float32)


VIT_SIZES = {
    's16': dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    'b16': dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
}
