"""Pluggable backbones and the SMoG network, built from `config.model`.

`config.model` fields:
  backbone: 'resnet18' | 'resnet34' | 'resnet50' | 'resnet101' | 'resnet152',
    or 'resnet' with explicit `stage_sizes` (e.g. [1, 1]) and `block`
    ('basic' | 'bottleneck') for tiny test and smoke-test networks;
    'vit_s16' | 'vit_b16', or 'vit' with explicit `patch_size`, `embed_dim`,
    `depth`, `num_heads`; 'swin_t', or 'swin' with explicit `patch_size`,
    `embed_dim`, `depths`, `num_heads`, `window`.
  width: channel multiplier of the backbone (1.0 = standard; 2.0 = 50w2).
  stem: 'imagenet' (224 px), 'cifar' (28-32 px: 3x3 conv, no max-pool) or
    'cifar_stride2' (the same conv with stride 2: every stage at half the
    resolution, for a quarter of the convolution work).
  remat: rematerialise every residual block in the backward pass (saves
    activation memory for one more forward pass of compute).
  drop_path_rate: ViT / Swin stochastic depth of the last block (online
    network only: the target network runs without drop path).
  pooling: ViT features, 'cls' (class token) or 'mean' (patch tokens).
  base_image_size: ViT, the image side the position table is learned for.
  projector_hidden_dim, predictor_hidden_dim: 2048 in the reference.
  projection_dim: 128 (ResNet) / 256 (Swin-T) in the reference.
  head_activation: 'relu' (ResNet) or 'gelu' (Swin-T).
  head_gelu_approximate: GELU heads, False for the exact GELU (PyTorch's
    `nn.GELU()`, the reference's), True for Flax's tanh approximation (the
    GELU heads before 2026-12-06). The backbones' GELUs are exact, fixed.
  dtype: computation dtype, 'float32' or 'bfloat16'.
  bn_momentum: decay of BN running statistics.
  zero_init_residual: ResNet, the last BN scale of each residual block
    starts at zero (False in the reference, torchvision's default).
  kernel_init: ResNet convolutions, 'he_fan_out_normal' (the reference) or
    'torch_default'.
  matmul_small_maps: ResNet, convolutions onto maps of at most 2x2 as one
    matmul (the same parameters and outputs, much faster on XLA:CPU).
  padding: ResNet, 'symmetric' (PyTorch's, so torchvision weights compute
    torchvision's features) or 'same' (XLA's, the runs before 2026-12-06).
  backbone_bn: ResNet under multi-crop, 'pooled' (the reference: one run
    of the online backbone over both resolutions, each BatchNorm's
    statistics over the pixels of all crops) or 'per_resolution' (one run
    per resolution, each BatchNorm over that resolution's crops; the runs
    saved before 2026-12-06).
  layer_norm_epsilon: ViT, 1e-6 as torchvision and timm (1e-5 before
    2026-12-06; Swin's is PyTorch's 1e-5, fixed).
Every config sets the fields its backbone reads (`required_fields`; the
config owns the defaults); configs saved before a field existed are brought
to today's fields by `upgrade_saved`.
New backbones register in `BACKBONES`: a callable `(model_config) -> module`
whose `__call__(images, train)` returns pooled `[B, F]` features.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from smog_jax.models.heads import MLPHead, SMoGNetwork
from smog_jax.models.resnet import BasicBlock, BottleneckBlock, ResNet, resnet
from smog_jax.models.swin import SWIN_SIZES, SwinTransformer
from smog_jax.models.vit import VIT_SIZES, VisionTransformer


# The fields every model config sets, and those of each backbone family.
HEAD_FIELDS = ('projector_hidden_dim', 'predictor_hidden_dim',
               'projection_dim', 'head_activation', 'dtype', 'bn_momentum')
RESNET_FIELDS = ('width', 'stem', 'remat', 'zero_init_residual',
                 'kernel_init', 'matmul_small_maps', 'padding', 'backbone_bn')
# ResNet fields added after the first version, with what the versions before
# each built, so that their checkpoints and exports build unchanged.
ADDED_RESNET_FIELDS = dict(remat=False, zero_init_residual=True,
                           kernel_init='he_fan_out_normal',
                           matmul_small_maps=True, padding='same',
                           backbone_bn='per_resolution')
# The same for ViT fields.
ADDED_VIT_FIELDS = dict(layer_norm_epsilon=1e-5)
# Fields of GELU heads beside HEAD_FIELDS, and those added since as above.
GELU_HEAD_FIELDS = ('head_gelu_approximate',)
ADDED_GELU_HEAD_FIELDS = dict(head_gelu_approximate=True)


def _is_resnet(cfg: ml_collections.ConfigDict) -> bool:
  return cfg.backbone.startswith('resnet')


def _is_vit(cfg: ml_collections.ConfigDict) -> bool:
  return cfg.backbone.startswith('vit')


def _has_gelu_heads(cfg: ml_collections.ConfigDict) -> bool:
  # An export's config, or one that validation finds lacking, may have none.
  return cfg.get('head_activation') == 'gelu'


def required_fields(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The fields of `cfg` (a `config.model`) that its backbone and heads
  read beside `backbone` itself (transformers: their own, read plainly)."""
  heads = HEAD_FIELDS + (GELU_HEAD_FIELDS if _has_gelu_heads(cfg) else ())
  if not _is_resnet(cfg):
    return heads
  custom = ('stage_sizes', 'block') if cfg.backbone == 'resnet' else ()
  return heads + RESNET_FIELDS + custom


def upgrade_saved(cfg: ml_collections.ConfigDict) -> None:
  """Brings a `config.model` saved by an earlier version to today's fields.

  In place: a field added since takes the value that version built.
  """
  added = dict(ADDED_RESNET_FIELDS if _is_resnet(cfg) else
               ADDED_VIT_FIELDS if _is_vit(cfg) else {})
  if _has_gelu_heads(cfg):
    added.update(ADDED_GELU_HEAD_FIELDS)
  with cfg.unlocked():
    for name, used in added.items():
      if name not in cfg:
        cfg[name] = used


def _resnet_kwargs(cfg: ml_collections.ConfigDict) -> dict:
  return dict(width=cfg.width, stem=cfg.stem, dtype=_dtype(cfg),
              bn_momentum=cfg.bn_momentum, remat=cfg.remat,
              zero_init_residual=cfg.zero_init_residual,
              kernel_init=cfg.kernel_init,
              matmul_small_maps=cfg.matmul_small_maps, padding=cfg.padding)


def _resnet_factory(depth: int) -> Callable[[ml_collections.ConfigDict],
                                            nn.Module]:
  return lambda cfg: resnet(depth, **_resnet_kwargs(cfg))


def _custom_resnet(cfg: ml_collections.ConfigDict) -> nn.Module:
  blocks = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}
  return ResNet(stage_sizes=tuple(cfg.stage_sizes),
                block_cls=blocks[cfg.block],
                **_resnet_kwargs(cfg))


BACKBONES: dict[str, Callable[[ml_collections.ConfigDict], nn.Module]] = {
    f'resnet{d}': _resnet_factory(d) for d in (18, 34, 50, 101, 152)
}
BACKBONES['resnet'] = _custom_resnet


def _transformer_kwargs(cfg: ml_collections.ConfigDict) -> dict:
  return dict(drop_path_rate=cfg.drop_path_rate, remat=cfg.remat,
              dtype=_dtype(cfg))


def _vit(cfg: ml_collections.ConfigDict, **size) -> nn.Module:
  size = size or dict(patch_size=cfg.patch_size, embed_dim=cfg.embed_dim,
                      depth=cfg.depth, num_heads=cfg.num_heads)
  return VisionTransformer(pooling=cfg.pooling,
                           base_image_size=cfg.base_image_size,
                           layer_norm_epsilon=cfg.layer_norm_epsilon, **size,
                           **_transformer_kwargs(cfg))


def _swin(cfg: ml_collections.ConfigDict, **size) -> nn.Module:
  size = size or dict(patch_size=cfg.patch_size, embed_dim=cfg.embed_dim,
                      depths=tuple(cfg.depths),
                      num_heads=tuple(cfg.num_heads), window=cfg.window)
  return SwinTransformer(**size, **_transformer_kwargs(cfg))


BACKBONES['vit'] = _vit
BACKBONES['swin'] = _swin
for _name, _size in VIT_SIZES.items():
  BACKBONES[f'vit_{_name}'] = functools.partial(_vit, **_size)
for _name, _size in SWIN_SIZES.items():
  BACKBONES[f'swin_{_name}'] = functools.partial(_swin, **_size)

_ACTIVATIONS = {'relu': nn.relu, 'gelu': nn.gelu}


def _head_activation(cfg: ml_collections.ConfigDict) -> Callable:
  act = _ACTIVATIONS[cfg.head_activation]
  if cfg.head_activation == 'gelu':
    # Flax's default is the tanh approximation; the reference's is exact.
    return functools.partial(act, approximate=cfg.head_gelu_approximate)
  return act


def _dtype(cfg: ml_collections.ConfigDict):
  return jnp.dtype(cfg.dtype)


def build_backbone(cfg: ml_collections.ConfigDict) -> nn.Module:
  """The backbone named by `cfg.backbone`."""
  if cfg.backbone not in BACKBONES:
    raise ValueError(f'Unknown backbone {cfg.backbone!r}; registered: '
                     f'{sorted(BACKBONES)}.')
  return BACKBONES[cfg.backbone](cfg)


BACKBONE_BN = ('per_resolution', 'pooled')


def _pooled_backbone_bn(cfg: ml_collections.ConfigDict) -> bool:
  if not _is_resnet(cfg):
    return False
  if cfg.backbone_bn not in BACKBONE_BN:
    raise ValueError(f'Unknown config.model.backbone_bn {cfg.backbone_bn!r}; '
                     f'use one of {BACKBONE_BN}.')
  return cfg.backbone_bn == 'pooled'


def build_network(cfg: ml_collections.ConfigDict) -> SMoGNetwork:
  """Backbone + projector + predictor as the spec's "Networks" section."""
  common = dict(activation=_head_activation(cfg), dtype=_dtype(cfg),
                bn_momentum=cfg.bn_momentum)
  return SMoGNetwork(
      backbone=build_backbone(cfg),
      projector=MLPHead(cfg.projector_hidden_dim, cfg.projection_dim,
                        output_norm=True, **common),
      predictor=MLPHead(cfg.predictor_hidden_dim, cfg.projection_dim,
                        output_norm=False, **common),
      pooled_backbone_bn=_pooled_backbone_bn(cfg))


__all__ = ['BACKBONES', 'MLPHead', 'ResNet', 'SMoGNetwork', 'SwinTransformer',
           'VisionTransformer', 'build_backbone', 'build_network',
           'required_fields', 'resnet', 'upgrade_saved']
