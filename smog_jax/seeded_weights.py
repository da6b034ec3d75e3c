"""Seeded torchvision-layout weights and inputs of the parity fixtures.

NumPy only (no JAX, no PyTorch): `benchmarks/torchvision_reference.py`
fills torchvision's models with these weights and records their features in
tests/data/torchvision/; tests/test_convert.py rebuilds the same weights from
the converter's layout and compares our backbones' features with those.

The rule (`WEIGHT_RULE_VERSION`) depends only on each key's name, shape and
the seed, so both sides build identical arrays from the same key set: every
key gets its own generator, `np.random.default_rng([seed, crc32(key)])`.
Weights of convolutions and linear layers are N(0, 1 / fan_in), so that
activations stay of order 1 through 50+ layers; BatchNorm running variances
are positive. What a ViT writes into its residual stream (patch embedding,
class token, position table, attention output and second MLP layer) is 20
times smaller, so that the stream's variance is of order 1e-3 to 1e-1 as in
trained ViTs, where the LayerNorm epsilon (1e-6 against 1e-5) matters.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from typing import Mapping, Sequence

import numpy as np

# Raise it whenever `seeded_state_dict` changes what it draws.
WEIGHT_RULE_VERSION = 2

# torchvision ViT keys that write into the residual stream, and their scale.
_VIT_RESIDUAL_WRITERS = ('conv_proj.weight', 'conv_proj.bias', 'class_token',
                         'encoder.pos_embedding', 'out_proj.weight',
                         'out_proj.bias')
_VIT_MLP_OUTPUT = re.compile(r'encoder_layer_\d+\.mlp\.3\.(weight|bias)$')
RESIDUAL_SCALE = 0.05


def relative_position_index(window: int) -> np.ndarray:
  """Swin's `[window**4]` table row of each (query, key) pair, flattened.

  A NumPy twin of `smog_jax.models.swin.relative_position_index`, which
  needs JAX (the fixture script's environment has none); the converter
  checks every imported index against that one, so the seeded Swin import
  of tests/test_convert.py fails if the two disagree.
  """
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window),
                                indexing='ij')).reshape(2, -1)
  dy, dx = coords[:, :, None] - coords[:, None, :] + window - 1
  return (dy * (2 * window - 1) + dx).reshape(-1).astype(np.int64)


def _seeded_array(key: str, shape: tuple[int, ...], seed: int
                  ) -> np.ndarray:
  rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
  if key.endswith('num_batches_tracked'):
    return np.zeros(shape, np.int64)
  if key.endswith('relative_position_index'):
    return relative_position_index(round(math.prod(shape)**0.25))
  if key.endswith('running_var'):
    values = rng.uniform(0.5, 1.5, shape)
  elif key.endswith('running_mean'):
    values = 0.1 * rng.standard_normal(shape)
  elif key.endswith(('class_token', 'pos_embedding',
                     'relative_position_bias_table')):
    values = 0.5 * rng.standard_normal(shape)
  elif len(shape) >= 2:  # Convolution kernels, linear and in_proj weights.
    values = rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))
  elif key.endswith('bias'):
    values = 0.1 * rng.standard_normal(shape)
  elif key.endswith('weight'):  # BatchNorm and LayerNorm scales.
    values = rng.uniform(0.5, 1.5, shape)
  else:
    raise ValueError(f'The weight rule has no case for {key!r} of shape '
                     f'{shape}; add one (and raise WEIGHT_RULE_VERSION).')
  if key.endswith(_VIT_RESIDUAL_WRITERS) or _VIT_MLP_OUTPUT.search(key):
    values = RESIDUAL_SCALE * values
  return values.astype(np.float32)


def seeded_state_dict(shapes: Mapping[str, Sequence[int]], seed: int
                      ) -> dict[str, np.ndarray]:
  """A state dict of `shapes` (torchvision's key names) by the seeded rule.

  Args:
    shapes: the shape of every key (heads excluded).
    seed: the weight seed.

  Returns:
    float32 weights; int64 `num_batches_tracked` (0) and Swin's
    `relative_position_index` (its true value).
  """
  return {key: _seeded_array(key, tuple(shape), seed)
          for key, shape in sorted(shapes.items())}


def seeded_images(seed: int, batch: int = 2, size: int = 224) -> np.ndarray:
  """float32 `[batch, 3, size, size]` N(0, 1) images (PyTorch's NCHW)."""
  rng = np.random.default_rng(seed)
  return rng.standard_normal((batch, 3, size, size)).astype(np.float32)


def digest(arrays: Mapping[str, np.ndarray]) -> str:
  """sha256 of the keys, dtypes, shapes and bytes, in sorted key order."""
  hasher = hashlib.sha256()
  for key in sorted(arrays):
    array = np.ascontiguousarray(arrays[key])
    hasher.update(f'{key}|{array.dtype.str}|{array.shape}|'.encode())
    hasher.update(array.tobytes())
  return hasher.hexdigest()
