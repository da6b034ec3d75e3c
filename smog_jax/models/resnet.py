"""ResNet backbones (He et al. 2016) in Flax linen, returning pooled features.

Three stems: `imagenet` (7x7/2 conv + 3x3/2 max-pool) for 224 px inputs,
`cifar` (3x3/1 conv, no max-pool) for 28-32 px inputs and `cifar_stride2`
(3x3/2 conv) for small inputs at half resolution. `width` scales every
layer's channel count (ResNet-50w2 is `width=2`; small CPU configs use e.g.
`width=0.5`).

Padding is PyTorch's by default (`padding='symmetric'`: k // 2 zeros on both
sides of a k x k convolution, the max-pool's -inf border likewise), so that
torchvision-layout weights compute torchvision's features; XLA's 'SAME' pads
an even-sized map by (0, 1) before a stride-2 window, which shifts the
sampling grid by a pixel at every downsampling (`padding='same'`, what runs
saved before 2026-12-06 trained with).

BatchNorm has no `axis_name`: the train step is compiled with `jax.jit` over
global arrays, so the batch mean and variance are already over the whole global
batch (synchronised BN) wherever the batch is sharded.

Multi-crop: a ResNet called on a tuple of image batches (one per resolution)
runs every layer on each and normalises each BatchNorm's inputs with
statistics pooled over all of them, every pixel weighing the same
(`config.model.backbone_bn='pooled'`, the reference's statistics); it
returns a tuple of features. `'per_resolution'` calls it once per resolution
instead.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ModuleDef = Any


# Convolution kernel initialisers (`ResNet.kernel_init`). BN follows every
# convolution, so at initialisation only the distribution's shape matters for
# the features; the scale sets the effective step size of non-LARS optimisers.
KERNEL_INITS = {
    # He et al. 2015, as torchvision's ResNet.
    'he_fan_out_normal': nn.initializers.variance_scaling(2.0, 'fan_out',
                                                          'normal'),
    # PyTorch's nn.Conv2d default, kaiming_uniform(a=sqrt(5)).
    'torch_default': nn.initializers.variance_scaling(1 / 3, 'fan_in',
                                                      'uniform'),
}


# Output maps of at most this many positions are convolved as one matmul.
SMALL_MAP_POSITIONS = 4


@functools.lru_cache(maxsize=None)
def _tap_matrix(in_hw: tuple[int, int], kernel_hw: tuple[int, int],
                strides: tuple[int, int], pads: tuple[tuple[int, int], ...],
                out_hw: tuple[int, int]) -> np.ndarray:
  """0/1 `[kh, kw, H, W, Ho, Wo]`: 1 where tap (ky, kx) of output (oy, ox)
  reads input pixel (y, x); taps on the zero padding read nothing."""
  (h, w), (kh, kw), (sy, sx), (ho, wo) = in_hw, kernel_hw, strides, out_hw
  taps = np.zeros((kh, kw, h, w, ho, wo), np.float32)
  for ky, kx, oy, ox in np.ndindex(kh, kw, ho, wo):
    y, x = oy * sy - pads[0][0] + ky, ox * sx - pads[1][0] + kx
    if 0 <= y < h and 0 <= x < w:
      taps[ky, kx, y, x, oy, ox] = 1.0
  return taps


def small_map_conv(lhs, rhs, window_strides, padding, *, lhs_dilation=None,
                   rhs_dilation=None, dimension_numbers=None,
                   feature_group_count=1, precision=None) -> jax.Array:
  """`lax.conv_general_dilated` for `nn.Conv`, small output maps as a matmul.

  A k x k (k > 1) NHWC convolution whose output has at most
  `SMALL_MAP_POSITIONS` positions is one matmul of the flattened input with
  the dense `[H*W*C, Ho*Wo*F]` operator of the kernel; XLA:CPU's strided
  convolutions onto 2x2 maps are many times slower (docs/benchmarks.md).
  Each operator entry is one kernel entry or zero, so the result is the
  convolution's up to summation order. Any other case is passed through.
  """
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                        ('NHWC', 'HWIO', 'NHWC'))
  kernel_hw, in_hw = tuple(rhs.shape[:2]), tuple(lhs.shape[1:3])
  plain = (lhs.ndim == 4 and dimension_numbers == nhwc
           and feature_group_count == 1 and kernel_hw != (1, 1)
           and set(lhs_dilation or (1,)) == {1}
           and set(rhs_dilation or (1,)) == {1})
  if plain:
    pads = tuple(tuple(p) for p in (
        jax.lax.padtype_to_pads(in_hw, kernel_hw, window_strides, padding)
        if isinstance(padding, str) else padding))
    out_hw = tuple((n + sum(p) - k) // s + 1 for n, p, k, s in
                   zip(in_hw, pads, kernel_hw, window_strides))
  if not plain or math.prod(out_hw) > SMALL_MAP_POSITIONS:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision)
  taps = _tap_matrix(in_hw, kernel_hw, tuple(window_strides), pads, out_hw)
  operator = jnp.einsum('abyxop,abcf->yxcopf', taps.astype(rhs.dtype), rhs)
  out = jnp.dot(lhs.reshape(lhs.shape[0], -1),
                operator.reshape(-1, math.prod(operator.shape[3:])),
                precision=precision)
  return out.reshape(lhs.shape[0], *out_hw, rhs.shape[-1])


PADDINGS = ('symmetric', 'same')


def _padded_conv(mode: str, features: int, kernel_size: Sequence[int],
                 strides: Sequence[int] = (1, 1), **kwargs) -> nn.Conv:
  """`nn.Conv` padded as `mode` (`PADDINGS`) says, unless given `padding`."""
  if 'padding' not in kwargs:
    kwargs['padding'] = ([(k // 2, k // 2) for k in kernel_size]
                         if mode == 'symmetric' else 'SAME')
  return nn.Conv(features, kernel_size, strides, **kwargs)


Maps = Any  # One `[N, H, W, C]` array, or a tuple of them (resolutions).


def _each(fn: Callable[[jax.Array], jax.Array], x: Maps) -> Maps:
  """`fn` on one array, or on each array of a tuple."""
  return tuple(fn(e) for e in x) if isinstance(x, tuple) else fn(x)


def _pooled_norm(norm: nn.Module, x: Maps) -> Maps:
  """`norm` (a BatchNorm) on one array, or on a tuple of arrays with the
  statistics of all their pixels together.

  The BatchNorm sees every pixel of every array as one `[P, C]` batch, so
  its mean and variance (and running statistics) weigh each array by its
  pixel count; each array then gets its own normalised copy back.
  """
  if not isinstance(x, tuple):
    return norm(x)
  channels = x[0].shape[-1]
  flat = norm(jnp.concatenate([e.reshape(-1, channels) for e in x]))
  ends = np.cumsum([math.prod(e.shape[:-1]) for e in x])[:-1]
  return tuple(y.reshape(e.shape) for y, e in zip(jnp.split(flat, ends), x))


def _shape(x: Maps) -> tuple[int, ...]:
  return (x[0] if isinstance(x, tuple) else x).shape


def _last_scale_init(zero: bool) -> Callable[..., jax.Array]:
  """Scale init of a block's last BN: zeros start the block as identity."""
  return nn.initializers.zeros if zero else nn.initializers.ones


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  strides: int = 1
  zero_init_residual: bool = True

  expansion = 1

  @nn.compact
  def __call__(self, x: Maps) -> Maps:
    residual = x
    y = _each(self.conv(self.filters, (3, 3), (self.strides, self.strides)),
              x)
    y = _each(self.act, _pooled_norm(self.norm(), y))
    y = _each(self.conv(self.filters, (3, 3)), y)
    y = _pooled_norm(
        self.norm(scale_init=_last_scale_init(self.zero_init_residual)), y)
    if _shape(residual) != _shape(y):
      residual = _each(self.conv(self.filters, (1, 1),
                                 (self.strides, self.strides),
                                 name='conv_proj'), residual)
      residual = _pooled_norm(self.norm(name='norm_proj'), residual)
    return jax.tree.map(lambda r, z: self.act(r + z), residual, y)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3 (strided, as in torchvision's v1.5), 1x1 expand (x4)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  strides: int = 1
  zero_init_residual: bool = True

  expansion = 4

  @nn.compact
  def __call__(self, x: Maps) -> Maps:
    residual = x
    y = _each(self.conv(self.filters, (1, 1)), x)
    y = _each(self.act, _pooled_norm(self.norm(), y))
    y = _each(self.conv(self.filters, (3, 3), (self.strides, self.strides)),
              y)
    y = _each(self.act, _pooled_norm(self.norm(), y))
    y = _each(self.conv(self.filters * self.expansion, (1, 1)), y)
    y = _pooled_norm(
        self.norm(scale_init=_last_scale_init(self.zero_init_residual)), y)
    if _shape(residual) != _shape(y):
      residual = _each(self.conv(self.filters * self.expansion, (1, 1),
                                 (self.strides, self.strides),
                                 name='conv_proj'), residual)
      residual = _pooled_norm(self.norm(name='norm_proj'), residual)
    return jax.tree.map(lambda r, z: self.act(r + z), residual, y)


class ResNet(nn.Module):
  """ResNet trunk + global average pooling: images -> `[B, num_features]`.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block_cls: `BasicBlock` or `BottleneckBlock`.
    width: channel multiplier (stage i has `round(64 * 2**i * width)` filters).
    stem: 'imagenet', 'cifar' or 'cifar_stride2'.
    dtype: computation dtype (parameters stay float32).
    bn_momentum: running-average decay of the BN statistics.
    remat: rematerialise each block in the backward pass.
    zero_init_residual: zero-initialise the last BN scale of every block
      (Goyal et al. 2017: each block starts as the identity); the SMoG
      reference (torchvision defaults) does not.
    kernel_init: a key of `KERNEL_INITS`.
    matmul_small_maps: run convolutions onto maps of at most 2x2 as one
      matmul (`small_map_conv`; the same parameters and outputs).
    padding: 'symmetric' (PyTorch's) or 'same' (XLA's; see above).
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  width: float = 1.0
  stem: str = 'imagenet'
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  remat: bool = False
  zero_init_residual: bool = True
  kernel_init: str = 'he_fan_out_normal'
  matmul_small_maps: bool = True
  padding: str = 'symmetric'

  @property
  def num_features(self) -> int:
    return (max(1, round(64 * self.width)) * 2**(len(self.stage_sizes) - 1) *
            self.block_cls.expansion)

  @nn.compact
  def __call__(self, x: Maps, train: bool = True) -> Maps:
    """Pooled features `[N, F]` of images `[N, H, W, C]`, or a tuple of
    them for a tuple of image batches (BatchNorm pooled over the tuple)."""
    if self.kernel_init not in KERNEL_INITS:
      raise ValueError(f'Unknown kernel_init {self.kernel_init!r}; use one of '
                       f'{sorted(KERNEL_INITS)}.')
    if self.padding not in PADDINGS:
      raise ValueError(f'Unknown ResNet padding {self.padding!r}; use one of '
                       f'{PADDINGS}.')
    conv = functools.partial(
        _padded_conv, self.padding, use_bias=False, dtype=self.dtype,
        kernel_init=KERNEL_INITS[self.kernel_init],
        conv_general_dilated=small_map_conv if self.matmul_small_maps else None)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-5,
                             dtype=self.dtype)
    base = max(1, round(64 * self.width))
    x = _each(lambda e: e.astype(self.dtype), x)
    if self.stem == 'imagenet':
      x = _each(conv(base, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
                     name='conv_init'), x)
      x = _each(nn.relu, _pooled_norm(norm(name='bn_init'), x))
      x = _each(lambda e: nn.max_pool(e, (3, 3), strides=(2, 2), padding=(
          ((1, 1), (1, 1)) if self.padding == 'symmetric' else 'SAME')), x)
    elif self.stem in ('cifar', 'cifar_stride2'):
      stem_strides = (2, 2) if self.stem == 'cifar_stride2' else (1, 1)
      x = _each(conv(base, (3, 3), stem_strides, name='conv_init'), x)
      x = _each(nn.relu, _pooled_norm(norm(name='bn_init'), x))
    else:
      raise ValueError(f"Unknown ResNet stem {self.stem!r}; use 'imagenet', "
                       "'cifar' or 'cifar_stride2'.")
    block_cls = nn.remat(self.block_cls) if self.remat else self.block_cls
    # Explicit names: the auto-names of remat blocks would differ, and a
    # checkpoint must load whether remat is on or off.
    names = (f'{self.block_cls.__name__}_{k}'
             for k in range(sum(self.stage_sizes)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(base * 2**i, conv=conv, norm=norm, act=nn.relu,
                      strides=strides, name=next(names),
                      zero_init_residual=self.zero_init_residual)(x)
    return _each(lambda e: jnp.mean(e, axis=(1, 2)).astype(jnp.float32), x)


RESNET_DEPTHS = {
    18: ((2, 2, 2, 2), BasicBlock),
    34: ((3, 4, 6, 3), BasicBlock),
    50: ((3, 4, 6, 3), BottleneckBlock),
    101: ((3, 4, 23, 3), BottleneckBlock),
    152: ((3, 8, 36, 3), BottleneckBlock),
}


def resnet(depth: int, **kwargs) -> ResNet:
  """ResNet-`depth` for depth in 18, 34, 50, 101, 152."""
  if depth not in RESNET_DEPTHS:
    raise ValueError(f'No ResNet-{depth}; choose one of '
                     f'{sorted(RESNET_DEPTHS)}.')
  stage_sizes, block_cls = RESNET_DEPTHS[depth]
  return ResNet(stage_sizes=stage_sizes, block_cls=block_cls, **kwargs)
