"""Host-side crop geometry (TensorFlow): random resized crops, flips, resizes.

Everything that changes pixel values beyond cropping and resizing runs on the
device (smog_jax/augment.py). Random windows come from uniforms the caller
draws with stateless ops, so a crop is a pure function of (image, seed).
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

CROP_ATTEMPTS = 10
# Uniforms per view: 10 (area, log-aspect, y, x) candidate windows + flip.
FLIP_DRAW = 4 * CROP_ATTEMPTS
DRAWS_PER_VIEW = FLIP_DRAW + 1


def crop_windows(draws: tf.Tensor, height, width, scale: Sequence[float],
                 ratio: Sequence[float]) -> tf.Tensor:
  """RandomResizedCrop windows, as torchvision samples them, vectorised.

  Each window tries `CROP_ATTEMPTS` (area fraction, log aspect ratio, y, x)
  candidates at once and keeps the first that fits; if none fits, the
  largest centred crop with its aspect ratio clamped into `ratio`.

  Args:
    draws: f32 `[n, CROP_ATTEMPTS, 4]` uniforms in [0, 1).
    height, width: image size (scalar tensors).
    scale: (min, max) fraction of the image area.
    ratio: (min, max) aspect ratio w / h.

  Returns:
    int32 `[n, 4]` windows `[offset_y, offset_x, crop_height, crop_width]`.
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  area = h * w * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = tf.exp(log_lo + (log_hi - log_lo) * draws[..., 1])
  cw = tf.round(tf.sqrt(area * aspect))
  ch = tf.round(tf.sqrt(area / aspect))
  fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  # Offsets uniform in [0, h - ch], as torch.randint(0, h - ch + 1).
  oy = tf.floor(draws[..., 2] * (h - ch + 1))
  ox = tf.floor(draws[..., 3] * (w - cw + 1))
  first = tf.argmax(tf.cast(fits, tf.int32), axis=-1, output_type=tf.int32)
  pick = lambda t: tf.gather(t, first, axis=1, batch_dims=1)
  sampled = tf.stack([pick(oy), pick(ox), pick(ch), pick(cw)], axis=-1)
  in_ratio = w / h
  fw = tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w)
  fh = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
  fallback = tf.broadcast_to(
      tf.stack([tf.floor((h - fh) / 2), tf.floor((w - fw) / 2), fh, fw]),
      tf.shape(sampled))
  found = tf.reduce_any(fits, axis=-1, keepdims=True)
  return tf.cast(tf.where(found, sampled, fallback), tf.int32)


def centre_window(height, width, fraction: float) -> tf.Tensor:
  """Square centre window of side `fraction * min(h, w)`: int32 [y, x, h, w]."""
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  side = tf.maximum(tf.round(fraction * tf.minimum(h, w)), 1.0)
  return tf.cast(tf.stack([tf.floor((h - side) / 2), tf.floor((w - side) / 2),
                           side, side]), tf.int32)


def resize(image: tf.Tensor, size: int, antialias: bool) -> tf.Tensor:
  """Bilinear resize to `size x size` (half-pixel centres), float32."""
  return tf.image.resize(tf.cast(image, tf.float32), (size, size),
                         method='bilinear', antialias=antialias)


def crop_views(image: tf.Tensor, windows: tf.Tensor, flips: tf.Tensor,
               size: int, antialias: bool) -> tf.Tensor:
  """Crops `windows [n, 4]` of one decoded image, resized, flipped where set.

  The image is decoded once and shared by its views. Returns uint8
  `[n, size, size, C]`, rounded as PIL's uint8 resize output.
  """
  views = []
  for i in range(windows.shape[0]):
    y, x, h, w = tf.unstack(windows[i])
    view = resize(image[y:y + h, x:x + w], size, antialias)
    views.append(tf.cond(flips[i], lambda v=view: tf.reverse(v, [1]),
                         lambda v=view: v))
  if not views:
    return tf.zeros([0, size, size, image.shape[-1]], tf.uint8)
  return tf.cast(tf.clip_by_value(tf.round(tf.stack(views)), 0.0, 255.0),
                 tf.uint8)

