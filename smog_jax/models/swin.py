"""Swin Transformer backbone (Liu et al. 2021), Swin-T by default.

image -> 4x4 patch embedding -> 4 stages of Swin blocks (alternating
window attention W-MSA and shifted-window attention SW-MSA), with 2x2 patch
merging between stages -> LayerNorm -> global average: `[B, 8 * embed_dim]`.

Any input size, e.g. the 224 px and 96 px multi-crop views:
  * A stage whose map is no larger than the window attends over the whole
    map, unshifted (Swin's own rule): at 224 px the last stage (7 x 7); at
    96 px the stages 3 and 4 (6 x 6 and 3 x 3).
  * A map that is not a multiple of the window (the 24 x 24 and 12 x 12 maps
    of 96 px) is zero-padded at the bottom and right to one; padding tokens
    get their own region label, so no real token attends to them, and they
    are cropped after attention.
  * The relative-position table has one row per offset of a full window,
    (2 * 7 - 1)^2 rows; a smaller window uses the rows of its offsets, so one
    set of parameters serves every crop size, without interpolation.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smog_jax.models import transformer as tfm


def stage_window(height: int, width: int, window: int, shift: int
                 ) -> tuple[int, int]:
  """(window, shift) a block uses on a `height x width` map."""
  if min(height, width) <= window:
    return min(height, width), 0
  return window, shift


def relative_position_index(window: int, table_window: int) -> np.ndarray:
  """`[T, T]` table row of each (query, key) offset in a `window` window.

  Offsets (dy, dx) in [-(w - 1), w - 1] index the table of a
  `table_window` window, row (dy + tw - 1) * (2 tw - 1) + (dx + tw - 1).
  """
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window),
                                indexing='ij')).reshape(2, -1)
  dy, dx = coords[:, :, None] - coords[:, None, :] + table_window - 1
  return dy * (2 * table_window - 1) + dx


def window_labels(height: int, width: int, window: int, shift: int
                  ) -> np.ndarray:
  """`[Hp, Wp]` region label of each position of the padded, shifted map.

  Tokens attend only to tokens of their window with the same label. Rows and
  columns that the cyclic shift wraps around from the top / left get their
  own labels (so they never attend to the bottom / right edge they are
  placed next to), and padding gets a label of its own.
  """
  hp, wp = -(-height // window) * window, -(-width // window) * window
  rows, cols = np.arange(hp)[:, None], np.arange(wp)[None, :]
  labels = 2 * (rows < shift) + (cols < shift)
  labels = np.where((rows < height) & (cols < width), labels, 4)
  return np.roll(labels, (-shift, -shift), axis=(0, 1))


def partition(x: jax.Array, window: int) -> jax.Array:
  """`[B, Hp, Wp, C] -> [B, num_windows, window * window, C]`."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, window * window, c)


def unpartition(x: jax.Array, window: int, height: int, width: int
                ) -> jax.Array:
  """Inverse of `partition` for a `[B, height, width, C]` map."""
  b, c = x.shape[0], x.shape[-1]
  x = x.reshape(b, height // window, width // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


def attention_mask(height: int, width: int, window: int, shift: int
                   ) -> np.ndarray:
  """`[num_windows, 1, T, T]` keep-mask of (shifted, padded) windows."""
  labels = window_labels(height, width, window, shift)
  labels = partition(labels[None, ..., None], window)[0, ..., 0]
  return (labels[:, :, None] == labels[:, None, :])[:, None]


class WindowAttention(nn.Module):
  """Multi-head self-attention inside windows, with relative-position bias."""
  num_heads: int
  table_window: int
  dtype: Any

  @nn.compact
  def __call__(self, windows: jax.Array, window: int, mask: np.ndarray
               ) -> jax.Array:
    table = self.param(tfm.RELATIVE_POSITION_TABLE, tfm.trunc_normal,
                       ((2 * self.table_window - 1)**2, self.num_heads))
    index = relative_position_index(window, self.table_window)
    bias = jnp.moveaxis(table[index], -1, 0)  # [heads, T, T]
    return tfm.SelfAttention(self.num_heads, self.dtype, name='attention')(
        windows, bias, mask)


class SwinBlock(nn.Module):
  """x + DropPath((S)W-MSA(LN(x))), then x + DropPath(MLP(LN(x))).

  `shift` is 0 for W-MSA and window // 2 for SW-MSA.
  """
  num_heads: int
  window: int
  shift: int
  mlp_ratio: float
  drop_path: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _, height, width, _ = x.shape
    window, shift = stage_window(height, width, self.window, self.shift)
    y = tfm.layer_norm(self.dtype)(x)
    hp, wp = -(-height // window) * window, -(-width // window) * window
    y = jnp.pad(y, ((0, 0), (0, hp - height), (0, wp - width), (0, 0)))
    y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
    y = WindowAttention(self.num_heads, self.window, self.dtype)(
        partition(y, window), window,
        attention_mask(height, width, window, shift))
    y = jnp.roll(unpartition(y, window, hp, wp), (shift, shift), axis=(1, 2))
    x = x + tfm.DropPath(self.drop_path)(y[:, :height, :width])
    y = tfm.MLP(self.mlp_ratio, self.dtype)(tfm.layer_norm(self.dtype)(x))
    return x + tfm.DropPath(self.drop_path)(y)


class PatchMerging(nn.Module):
  """2x2 neighbouring tokens concatenated (4C) -> LN -> Linear to 2C."""
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2],
                         x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    x = tfm.layer_norm(self.dtype)(x)
    return tfm.dense(2 * c, self.dtype, use_bias=False)(x)


class SwinTransformer(nn.Module):
  """Swin trunk: images `[B, H, W, C]` -> `[B, embed_dim * 2**(stages-1)]`.

  Attributes:
    patch_size: side of a patch (4).
    embed_dim: token width of stage 1 (96 for Swin-T).
    depths: blocks per stage ((2, 2, 6, 2) for Swin-T).
    num_heads: heads per stage ((3, 6, 12, 24) for Swin-T).
    window: attention window side (7).
    mlp_ratio: MLP hidden width / token width (4).
    drop_path_rate: stochastic depth of the last block.
    remat: rematerialise each block in the backward pass.
    dtype: computation dtype (parameters stay float32).
  """
  patch_size: int = 4
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window: int = 7
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  remat: bool = False
  dtype: Any = jnp.float32

  @property
  def num_features(self) -> int:
    return self.embed_dim * 2**(len(self.depths) - 1)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    del train  # No BatchNorm; drop path follows the 'dropout' rng.
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), (p, p), padding='VALID',
                dtype=self.dtype, name='patch_embedding')(x.astype(self.dtype))
    x = tfm.layer_norm(self.dtype, name='patch_norm')(x)
    rates = iter(tfm.drop_path_rates(self.drop_path_rate, sum(self.depths)))
    block = nn.remat(SwinBlock) if self.remat else SwinBlock
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      if i > 0:
        x = PatchMerging(self.dtype, name=f'merge{i}')(x)
      for j in range(depth):
        shift = self.window // 2 if j % 2 else 0
        x = block(heads, self.window, shift, self.mlp_ratio, next(rates),
                  self.dtype, name=f'stage{i}_block{j}')(x)
    x = tfm.layer_norm(self.dtype, name='norm')(x)
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


SWIN_SIZES = {
    't': dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
}
