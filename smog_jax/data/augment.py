"""Stateless image augmentations for the SMoG multi-crop views (TensorFlow, host only).

Every random op takes an explicit ``seed`` (an int64 tensor of shape ``[2]``) and uses only
``tf.random.stateless_*`` ops, so the output is a pure function of (image, seed). Images are
float32 in ``[0, 1]``, channel-last ``[H, W, C]`` with ``C`` 1 or 3, until :func:`normalize`.

The semantics follow torchvision (which the PyTorch reference uses): brightness, contrast and
saturation are blends with black / the mean grey level / the grey image, each followed by a
clip to ``[0, 1]``; the four jitter ops are applied in a random order; grayscale uses the ITU-R
601 luma weights; solarize inverts pixels ``>= 0.5``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import tensorflow as tf

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class ViewParams:
  """Parameters of one augmentation pipeline (A or B of the spec).

  Attributes:
    brightness: Max relative brightness change (factor drawn from [1-b, 1+b]).
    contrast: Max relative contrast change.
    saturation: Max relative saturation change.
    hue: Max hue shift, in turns of the colour wheel ([-h, h]).
    jitter_prob: Probability of applying the colour jitter.
    grayscale_prob: Probability of converting to grayscale.
    blur_prob: Probability of the Gaussian blur.
    blur_sigma: (min, max) of the blur's standard deviation, in pixels.
    solarize_prob: Probability of solarization.
    flip_prob: Probability of a horizontal flip.
  """

  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.2
  hue: float = 0.1
  jitter_prob: float = 0.8
  grayscale_prob: float = 0.2
  blur_prob: float = 1.0
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  solarize_prob: float = 0.0
  flip_prob: float = 0.5


def _uniform(seed: tf.Tensor, shape=(), minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
  return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval,
                                     dtype=tf.float32)


def sample_crop_window(seed: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                       scale: Sequence[float], ratio: Sequence[float] = (3 / 4, 4 / 3),
                       attempts: int = 10) -> tf.Tensor:
  """Samples a RandomResizedCrop window, as torchvision does, without a Python loop.

  Tries ``attempts`` (area fraction, log aspect ratio) pairs at once and keeps the first that
  fits inside the image; if none fits, falls back to the largest centred crop whose aspect
  ratio is clamped to ``ratio``.

  Args:
    seed: int64 ``[2]`` stateless seed.
    height: Image height (scalar int tensor).
    width: Image width (scalar int tensor).
    scale: (min, max) fraction of the image area covered by the crop.
    ratio: (min, max) aspect ratio w/h of the crop.
    attempts: Number of candidate windows.

  Returns:
    int32 ``[4]`` tensor ``[offset_y, offset_x, crop_height, crop_width]``, the layout that
    ``tf.image.decode_and_crop_jpeg`` expects.
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  u = tf.random.stateless_uniform([attempts, 4], seed=seed, dtype=tf.float32)
  area = h * w * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = tf.exp(log_lo + (log_hi - log_lo) * u[:, 1])
  cw = tf.round(tf.sqrt(area * aspect))
  ch = tf.round(tf.sqrt(area / aspect))
  ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  # Uniform integer offsets in [0, h - ch] (inclusive), as torch.randint(0, h - ch + 1).
  oy = tf.floor(u[:, 2] * (h - ch + 1))
  ox = tf.floor(u[:, 3] * (w - cw + 1))
  first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
  cand = tf.stack([oy[first], ox[first], ch[first], cw[first]])

  # Fallback: centre crop with the aspect ratio clamped into `ratio`.
  in_ratio = w / h
  fw = tf.where(in_ratio < ratio[0], w, tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w))
  fh = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
  fallback = tf.stack([tf.floor((h - fh) / 2), tf.floor((w - fw) / 2), fh, fw])
  window = tf.where(tf.reduce_any(ok), cand, fallback)
  return tf.cast(window, tf.int32)


def centre_crop_window(height: tf.Tensor, width: tf.Tensor, fraction: float) -> tf.Tensor:
  """Square centre window of side ``fraction * min(height, width)`` as [y, x, h, w] int32."""
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  side = tf.maximum(tf.round(fraction * tf.minimum(h, w)), 1.0)
  return tf.cast(tf.stack([tf.floor((h - side) / 2), tf.floor((w - side) / 2), side, side]),
                 tf.int32)


def crop(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  """Crops a decoded ``[H, W, C]`` image to ``window`` = [y, x, h, w]."""
  return tf.slice(image, tf.stack([window[0], window[1], 0]),
                  tf.stack([window[2], window[3], -1]))


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bilinear, antialiased resize to ``size x size``; returns float32 in the input's range."""
  return tf.image.resize(tf.cast(image, tf.float32), (size, size), method='bilinear',
                         antialias=True)


def to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
  """Replicates a grey image to 3 channels, or converts RGB to grey, to get ``channels``."""
  have = image.shape[-1]
  if have == channels:
    return image
  if have == 1 and channels == 3:
    return tf.tile(image, [1, 1, 3])
  if have == 3 and channels == 1:
    return grayscale(image)[..., :1]
  raise ValueError(f'Cannot convert {have} channels to {channels}.')


def maybe_flip(image: tf.Tensor, seed: tf.Tensor, prob: float = 0.5) -> tf.Tensor:
  """Horizontal flip with probability ``prob``."""
  return tf.cond(_uniform(seed) < prob, lambda: tf.reverse(image, axis=[1]), lambda: image)


def grayscale(image: tf.Tensor) -> tf.Tensor:
  """RGB -> luma, replicated to 3 channels (keeps the channel count, like torchvision)."""
  grey = tf.tensordot(image, tf.constant(LUMA_WEIGHTS, tf.float32), axes=[[-1], [0]])
  return tf.tile(grey[..., None], [1, 1, 3])


def _grey_level(image: tf.Tensor) -> tf.Tensor:
  """Per-pixel grey level ``[H, W, 1]`` (the image itself when single-channel)."""
  if image.shape[-1] == 1:
    return image
  return grayscale(image)[..., :1]


def adjust_brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blend with black: ``clip(factor * image)``."""
  return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blend with the mean grey level of the whole image."""
  mean = tf.reduce_mean(_grey_level(image))
  return tf.clip_by_value(mean + factor * (image - mean), 0.0, 1.0)


def adjust_saturation(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blend with the per-pixel grey image (torchvision semantics, not HSV scaling)."""
  grey = _grey_level(image)
  return tf.clip_by_value(grey + factor * (image - grey), 0.0, 1.0)


def adjust_hue(image: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
  """Rotates the hue by ``delta`` turns (HSV), as torchvision's adjust_hue."""
  return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)


def color_jitter(image: tf.Tensor, seed: tf.Tensor, params: ViewParams) -> tf.Tensor:
  """Brightness, contrast, saturation and hue jitter in a random order.

  For single-channel images only brightness and contrast are applied: saturation and hue are
  undefined without colour.
  """
  s_factor, s_order = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  u = tf.random.stateless_uniform([4], seed=s_factor, dtype=tf.float32)
  b = 1.0 + params.brightness * (2.0 * u[0] - 1.0)
  c = 1.0 + params.contrast * (2.0 * u[1] - 1.0)
  s = 1.0 + params.saturation * (2.0 * u[2] - 1.0)
  h = params.hue * (2.0 * u[3] - 1.0)
  ops = [lambda x: adjust_brightness(x, b), lambda x: adjust_contrast(x, c)]
  if image.shape[-1] == 3:
    ops += [lambda x: adjust_saturation(x, s), lambda x: adjust_hue(x, h)]
  order = tf.argsort(tf.random.stateless_uniform([len(ops)], seed=s_order))
  for i in range(len(ops)):
    # Bind `image` as an argument so every branch sees the output of the previous op.
    image = tf.switch_case(order[i], [lambda op=op, x=image: op(x) for op in ops])
  return image


def gaussian_kernel_size(crop_size: int) -> int:
  """Odd kernel size of ~10% of the crop side (23 for 224 px, as BYOL); 1 means no blur."""
  return int(0.1 * crop_size) // 2 * 2 + 1


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
  """Separable Gaussian blur with reflect padding.

  Args:
    image: ``[H, W, C]`` float image.
    sigma: Standard deviation in pixels (scalar tensor).
    kernel_size: Odd kernel size; 1 returns the image unchanged.

  Returns:
    The blurred image, same shape.
  """
  if kernel_size <= 1:
    return image
  radius = kernel_size // 2
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  k = tf.exp(-0.5 * tf.square(x / sigma))
  k = k / tf.reduce_sum(k)
  # The separable convolutions are written as two matmuls with banded matrices: on CPU this is
  # ~8x faster than tf.nn.depthwise_conv2d, whose kernel is slow for long 1-D filters (about
  # 4 ms instead of 33 ms for a 224 px crop with 23 taps).
  x = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode='REFLECT')

  def banded(n):  # [n, n + 2r] with row i holding the kernel at columns i .. i + 2r.
    d = tf.range(n + 2 * radius)[None, :] - tf.range(n)[:, None]
    inside = (d >= 0) & (d < kernel_size)
    return tf.where(inside, tf.gather(k, tf.clip_by_value(d, 0, kernel_size - 1)), 0.0)

  height, width = image.shape[0], image.shape[1]
  if height is None or width is None:
    raise ValueError('gaussian_blur needs a static image size.')
  x = tf.einsum('hpc,wp->hwc', x, banded(width))
  x = tf.einsum('pwc,hp->hwc', x, banded(height))
  return x


def solarize(image: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
  """Inverts pixels ``>= threshold``."""
  return tf.where(image >= threshold, 1.0 - image, image)


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """``(image - mean) / std`` per channel."""
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _apply_with_prob(prob, seed, fn, image):
  """Applies ``fn`` with probability ``prob`` (a Python float or a scalar tensor)."""
  if isinstance(prob, (int, float)):
    if prob <= 0.0:
      return image
    if prob >= 1.0:
      return fn(image)
  return tf.cond(_uniform(seed) < prob, lambda: fn(image), lambda: image)


def augment_colour_and_blur(image: tf.Tensor, seed: tf.Tensor, params: ViewParams,
                            blur_prob=None, solarize_prob=None) -> tf.Tensor:
  """Flip, colour jitter, grayscale, blur and solarize of one ``[S, S, C]`` crop in [0, 1].

  Args:
    image: float32 crop in ``[0, 1]``.
    seed: int64 ``[2]`` seed of this crop.
    params: The pipeline's parameters.
    blur_prob: Overrides ``params.blur_prob`` (may be a tensor, to select A/B in-graph).
    solarize_prob: Overrides ``params.solarize_prob`` (idem).

  Returns:
    The augmented crop, float32 in ``[0, 1]``.
  """
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 7))
  blur_prob = params.blur_prob if blur_prob is None else blur_prob
  solarize_prob = params.solarize_prob if solarize_prob is None else solarize_prob
  image = maybe_flip(image, seeds[0], params.flip_prob)
  image = _apply_with_prob(params.jitter_prob, seeds[1],
                           lambda x: color_jitter(x, seeds[2], params), image)
  if image.shape[-1] == 3:
    image = _apply_with_prob(params.grayscale_prob, seeds[3], grayscale, image)
  size = int(image.shape[0])
  sigma = _uniform(seeds[5], minval=params.blur_sigma[0], maxval=params.blur_sigma[1])
  image = _apply_with_prob(blur_prob, seeds[4],
                           lambda x: gaussian_blur(x, sigma, gaussian_kernel_size(size)), image)
  image = _apply_with_prob(solarize_prob, seeds[6], solarize, image)
  return image


# ------------------------------------------------------------------------------------------
# Vectorised multi-crop augmentation.
#
# The training and bank-fill pipelines draw every random number of a view (one crop of one
# pipeline) at once: row ``crop_id`` of ``stateless_uniform([n_crops, NUM_UNIFORMS], seed)``
# with ``seed`` = fold_in(example key, pipeline). The layout of a row is below. The geometry
# (window, flip, crop + resize) runs per example (image sizes differ); the pixel ops run on the
# whole batch of crops at once (``augment_views``), which amortises TensorFlow's per-op cost
# over ``rows x crops`` images.

CROP_ATTEMPTS = 10
U_CROP = slice(0, 4 * CROP_ATTEMPTS)  # 10 (area, log-aspect, y, x) candidate windows.
U_FLIP = 40
U_JITTER = 41  # Whether the colour jitter is applied.
U_FACTORS = slice(42, 46)  # Brightness, contrast, saturation, hue factors.
U_ORDER = slice(46, 50)  # Sort keys of the random order of the four jitter ops.
U_GREY = 50
U_BLUR = 51
U_SIGMA = 52
U_SOLARIZE = 53
NUM_UNIFORMS = 54


def sample_crop_windows(u: tf.Tensor, height, width, scale: Sequence[float],
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tf.Tensor:
  """:func:`sample_crop_window` for many windows: ``u`` is f32 ``[..., attempts, 4]``.

  ``height`` / ``width`` broadcast against ``u.shape[:-2]``. Returns int32 ``[..., 4]`` windows
  ``[offset_y, offset_x, crop_height, crop_width]``.
  """
  h = tf.cast(height, tf.float32)[..., None]
  w = tf.cast(width, tf.float32)[..., None]
  area = h * w * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = tf.exp(log_lo + (log_hi - log_lo) * u[..., 1])
  cw = tf.round(tf.sqrt(area * aspect))
  ch = tf.round(tf.sqrt(area / aspect))
  ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  oy = tf.floor(u[..., 2] * (h - ch + 1))
  ox = tf.floor(u[..., 3] * (w - cw + 1))
  first = tf.argmax(tf.cast(ok, tf.int32), axis=-1, output_type=tf.int32)[..., None]
  pick = lambda t: tf.gather(t, first, axis=-1, batch_dims=len(t.shape) - 1)[..., 0]
  cand = tf.stack([pick(oy), pick(ox), pick(ch), pick(cw)], axis=-1)
  h, w = h[..., 0], w[..., 0]
  in_ratio = w / h
  fw = tf.where(in_ratio < ratio[0], w, tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w))
  fh = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
  fallback = tf.stack([tf.floor((h - fh) / 2), tf.floor((w - fw) / 2), fh, fw], axis=-1)
  fallback = tf.broadcast_to(fallback, tf.shape(cand))
  return tf.cast(tf.where(tf.reduce_any(ok, axis=-1)[..., None], cand, fallback), tf.int32)


def resize_boxes(windows: tf.Tensor, height, width, size: int, flip: tf.Tensor) -> tf.Tensor:
  """Boxes for ``tf.image.crop_and_resize`` on the image padded by 1 edge pixel per side.

  The sample points are those of a half-pixel-centre bilinear resize of the window (what
  ``tf.image.resize(..., antialias=False)`` and torch's ``interpolate(align_corners=False)``
  do); the 1-pixel edge padding turns positions up to half a pixel outside the image into
  edge clamping instead of crop_and_resize's extrapolation. ``flip`` (bool ``[n]``) mirrors a
  box horizontally (crop_and_resize samples x2 -> x1 when x1 > x2), so flips cost nothing.

  Args:
    windows: int32 ``[n, 4]`` windows [y, x, h, w] in the unpadded image.
    height: Unpadded image height (scalar).
    width: Unpadded image width (scalar).
    size: Output side.
    flip: bool ``[n]``.

  Returns:
    f32 ``[n, 4]`` normalised boxes [y1, x1, y2, x2] of the padded image.
  """
  win = tf.cast(windows, tf.float32)
  y, x, ch, cw = win[:, 0], win[:, 1], win[:, 2], win[:, 3]
  # First / last sample centres in unpadded pixel coordinates, shifted by the padding (+1).
  y1 = y + 0.5 * ch / size - 0.5 + 1.0
  y2 = y + (size - 0.5) * ch / size - 0.5 + 1.0
  x1 = x + 0.5 * cw / size - 0.5 + 1.0
  x2 = x + (size - 0.5) * cw / size - 0.5 + 1.0
  x1, x2 = tf.where(flip, x2, x1), tf.where(flip, x1, x2)
  hp = tf.cast(height, tf.float32) + 1.0  # Padded size - 1: crop_and_resize's normaliser.
  wp = tf.cast(width, tf.float32) + 1.0
  return tf.stack([y1 / hp, x1 / wp, y2 / hp, x2 / wp], axis=-1)


def crop_resize_many(image: tf.Tensor, windows: tf.Tensor, flip: tf.Tensor,
                     size: int) -> tf.Tensor:
  """Crops ``windows`` of one ``[H, W, C]`` uint8 image, resized (bilinear) to ``size``.

  The image is decoded once and shared. With a static number of windows each window is sliced
  and resized with ``tf.image.resize(antialias=False)`` (half-pixel centres; sample points past
  the window's edge clamp to it, as torchvision's crop-then-resize), then mirrored if ``flip``:
  about 3x faster on CPU than one ``crop_and_resize`` for all windows (whose per-pixel kernel
  is not vectorised). Otherwise one ``crop_and_resize`` on the edge-padded image
  (:func:`resize_boxes`). Returns uint8 ``[n, size, size, C]`` (rounded, as PIL's uint8 resize
  output).
  """
  n = windows.shape[0]
  if n is not None:
    outs = []
    for i in range(n):
      w = windows[i]
      r = tf.image.resize(tf.slice(image, tf.stack([w[0], w[1], 0]), tf.stack([w[2], w[3], -1])),
                          (size, size), method='bilinear', antialias=False)
      outs.append(tf.cond(flip[i], lambda r=r: tf.reverse(r, [1]), lambda r=r: r))
    out = tf.stack(outs) if outs else tf.zeros([0, size, size, image.shape[-1]], tf.float32)
  else:
    shape = tf.shape(image)
    padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]], mode='SYMMETRIC')
    boxes = resize_boxes(windows, shape[0], shape[1], size, flip)
    out = tf.image.crop_and_resize(padded[None], boxes,
                                   tf.zeros([tf.shape(boxes)[0]], tf.int32), [size, size],
                                   method='bilinear')
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def grey_level(images: tf.Tensor) -> tf.Tensor:
  """Luma ``[..., 1]`` of ``[..., C]`` images (the image itself when single-channel).

  Written elementwise (not as a matmul) so each pixel's value does not depend on how many
  images are in the batch: batch-level ops must give bit-identical crops whatever the process
  count.
  """
  if images.shape[-1] == 1:
    return images
  wr, wg, wb = LUMA_WEIGHTS
  return images[..., 0:1] * wr + images[..., 1:2] * wg + images[..., 2:3] * wb


def adjust_hue_batch(images: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
  """Per-image hue rotation of ``[N, H, W, 3]`` by ``delta`` ``[N]`` turns (HSV).

  One fused ``AdjustHue`` per image (``tf.map_fn``): about 2x faster than rgb_to_hsv +
  hsv_to_rgb on the whole batch, and per-image shapes keep results batch-invariant.
  """
  return tf.map_fn(lambda a: adjust_hue(a[0], a[1]), (images, delta),
                   fn_output_signature=tf.TensorSpec(images.shape[1:], tf.float32))


def _on_subset(images: tf.Tensor, mask: tf.Tensor, fn, *args) -> tf.Tensor:
  """``fn(images[mask], *(a[mask] for a in args))`` scattered back; the rest unchanged."""
  idx = tf.where(mask)
  sub = fn(tf.gather_nd(images, idx), *(tf.gather_nd(a, idx) for a in args))
  return tf.tensor_scatter_nd_update(images, idx, sub)


def _blur_one(img: tf.Tensor, sig: tf.Tensor, kernel_size: int) -> tf.Tensor:
  """Gaussian blur of one ``[H, W, C]`` crop (static shape) as two banded matmuls.

  The vertical pass is one 2-D matmul ``[H, H+2r] x [H+2r, (W+2r) C]`` on the padded image in
  its HWC layout (no transpose), the horizontal pass an einsum with the ``[W, W+2r]`` band
  (about 1.5x faster than transposing to CHW for both passes). The kernel is built per crop (a
  batched row sum would round differently with the batch).
  """
  radius = kernel_size // 2
  height, width, channels = img.shape
  offs = tf.range(-radius, radius + 1, dtype=tf.float32)
  kern = tf.exp(-0.5 * tf.square(offs / sig))
  kern = tf.concat([kern / tf.reduce_sum(kern), [0.0]], 0)  # Index `kernel_size` is a zero.

  def band(n):  # [n, n + 2r]: row i holds the kernel at columns i .. i + 2r.
    d = tf.range(n + 2 * radius)[None, :] - tf.range(n)[:, None]
    return tf.gather(kern, tf.where((d >= 0) & (d < kernel_size), d, kernel_size))

  x = tf.pad(img, [[radius, radius], [radius, radius], [0, 0]], mode='REFLECT')
  x = tf.matmul(band(height), tf.reshape(x, [height + 2 * radius,
                                             (width + 2 * radius) * channels]))
  x = tf.reshape(x, [height, width + 2 * radius, channels])
  return tf.einsum('hpc,wp->hwc', x, band(width))


def gaussian_blur_batch(images: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
  """:func:`gaussian_blur` of ``[N, H, W, C]`` images, each with its own ``sigma`` ``[N]``.

  Two banded matmuls per crop inside ``tf.map_fn``: the fixed per-crop shapes keep every
  crop's result bit-identical whatever the batch (a batched matmul's kernel choice, and
  Grappler's rewrites of batched multiply-adds, change the rounding with the batch size, which
  would make the crops depend on the process count).
  """
  if kernel_size <= 1:
    return images
  _, height, width, channels = images.shape

  radius = kernel_size // 2

  def band_index(n):  # [n, n + 2r]: row i holds the kernel at columns i .. i + 2r.
    d = tf.range(n + 2 * radius)[None, :] - tf.range(n)[:, None]
    return tf.where((d >= 0) & (d < kernel_size), d, kernel_size)

  idx_w, idx_h = band_index(width), band_index(height)

  def one(args):  # CHW layout, two 2-D matmuls: faster than _blur_one's einsum on tiny crops.
    img, sig = args  # [H, W, C], scalar
    # The kernel is built per crop too: a batched row sum rounds differently with the batch.
    offs = tf.range(-radius, radius + 1, dtype=tf.float32)
    kern = tf.exp(-0.5 * tf.square(offs / sig))
    kern = tf.concat([kern / tf.reduce_sum(kern), [0.0]], 0)  # Index `kernel_size` is a zero.
    x = tf.transpose(img, [2, 0, 1])  # [C, H, W]
    x = tf.pad(x, [[0, 0], [radius, radius], [radius, radius]], mode='REFLECT')
    x = tf.reshape(x, [channels * (height + 2 * radius), width + 2 * radius])
    x = tf.matmul(x, tf.gather(kern, idx_w), transpose_b=True)
    x = tf.reshape(x, [channels, height + 2 * radius, width])
    x = tf.matmul(tf.broadcast_to(tf.gather(kern, idx_h), [channels, height,
                                                            height + 2 * radius]), x)
    return tf.transpose(x, [1, 2, 0])

  def blur(x):
    return tf.map_fn(one, (x, sigma), fn_output_signature=tf.TensorSpec(
        [height, width, channels], tf.float32))

  return tf.cond(tf.shape(images)[0] > 0, lambda: blur(images), lambda: images)


def _per_pipeline(values, pipeline: tf.Tensor) -> tf.Tensor:
  return tf.gather(tf.constant(values, tf.float32), pipeline)


def augment_views(images: tf.Tensor, u: tf.Tensor, pipeline: tf.Tensor,
                  params: Sequence[ViewParams]) -> tf.Tensor:
  """Colour jitter, grayscale, blur and solarize of a batch of crops, vectorised.

  The same operations, probabilities and order rules as :func:`augment_colour_and_blur` (whose
  flip is done by the crop boxes here), with every crop's randomness read from its row of ``u``.

  Args:
    images: f32 ``[N, S, S, C]`` crops in [0, 1].
    u: f32 ``[N, NUM_UNIFORMS]`` uniforms of each crop (layout ``U_*``).
    pipeline: int32 ``[N]``: 0 (A) or 1 (B), selects the crop's ``params``.
    params: Parameters of pipelines A and B.

  Returns:
    The augmented crops, f32 ``[N, S, S, C]`` in [0, 1].
  """
  x = images
  channels = int(x.shape[-1])
  pp = lambda name: _per_pipeline([getattr(p, name) for p in params], pipeline)

  # Colour jitter: factors set to the identity (1, 1, 1, 0) where it is not applied.
  apply = u[:, U_JITTER] < pp('jitter_prob')
  f = 2.0 * u[:, U_FACTORS] - 1.0
  b = 1.0 + pp('brightness') * f[:, 0]
  c = 1.0 + pp('contrast') * f[:, 1]
  s = 1.0 + pp('saturation') * f[:, 2]
  h = pp('hue') * f[:, 3]
  one = tf.ones_like(b)
  b, c, s = (tf.where(apply, t, one) for t in (b, c, s))
  h = tf.where(apply, h, 0.0)
  n_ops = 4 if channels == 3 else 2  # Saturation and hue are undefined without colour.
  order = tf.argsort(u[:, U_ORDER][:, :n_ops], axis=-1)  # order[:, i]: op of slot i.
  factors = tf.stack([b, c, s, one][:n_ops], axis=-1)
  for i in range(n_ops):
    op = order[:, i]
    # Brightness, contrast and saturation are blends f * x + (1 - f) * t with t = 0, the mean
    # grey level, the grey image; hue slots (and crops without jitter) get f = 1: identity.
    fi = tf.gather(factors, op, axis=1, batch_dims=1)[:, None, None, None]
    grey = grey_level(x)
    mean = tf.reduce_mean(grey, axis=[1, 2, 3], keepdims=True)
    op4 = op[:, None, None, None]
    t = tf.where(op4 == 1, mean, tf.where(op4 == 2, grey, 0.0))
    x = tf.clip_by_value(fi * x + (1.0 - fi) * t, 0.0, 1.0)
    if channels == 3:
      x = _on_subset(x, (op == 3) & apply, adjust_hue_batch, h)
  if channels == 3:
    to_grey = u[:, U_GREY] < pp('grayscale_prob')
    x = tf.where(to_grey[:, None, None, None], tf.tile(grey_level(x), [1, 1, 1, 3]), x)
  size = int(x.shape[1])
  ksize = gaussian_kernel_size(size)
  if ksize > 1:
    lo, hi = zip(*[p.blur_sigma for p in params])
    sigma = _per_pipeline(lo, pipeline) + (
        _per_pipeline(hi, pipeline) - _per_pipeline(lo, pipeline)) * u[:, U_SIGMA]
    blur = u[:, U_BLUR] < pp('blur_prob')
    x = _on_subset(x, blur, lambda y, sg: gaussian_blur_batch(y, sg, ksize), sigma)
  sol = (u[:, U_SOLARIZE] < pp('solarize_prob'))[:, None, None, None]
  return tf.where(sol & (x >= 0.5), 1.0 - x, x)


def augment_views_per_crop(images: tf.Tensor, u: tf.Tensor, pipeline: tf.Tensor,
                           params: Sequence[ViewParams]) -> tf.Tensor:
  """:func:`augment_views` with per-crop control flow, for a few large crops (one example's).

  Same operations, probabilities, order rule and random numbers as :func:`augment_views`, but
  each crop (the batch size must be static) runs only the ops it applies: the jitter under a
  ``tf.cond`` on its own draw, its four ops in the crop's own order through ``tf.switch_case``,
  and grayscale / blur / solarize each under a ``tf.cond``. At 224 px this avoids computing
  every jitter op in every slot for every crop (the slot-by-slot vectorisation) and the
  blends with a not-applied branch. Every op sees one crop, so results are batch-invariant.

  Args, returns: as :func:`augment_views`.
  """
  n = images.shape[0]
  if n is None:
    raise ValueError('augment_views_per_crop needs a static number of crops.')
  if n == 0:
    return images
  channels = int(images.shape[-1])
  size = int(images.shape[1])
  ksize = gaussian_kernel_size(size)
  n_ops = 4 if channels == 3 else 2  # Saturation and hue are undefined without colour.
  pp = lambda name: _per_pipeline([getattr(p, name) for p in params], pipeline)
  jitter_p, grey_p, blur_p, sol_p = (pp(k) for k in (
      'jitter_prob', 'grayscale_prob', 'blur_prob', 'solarize_prob'))
  f = 2.0 * u[:, U_FACTORS] - 1.0
  b = 1.0 + pp('brightness') * f[:, 0]
  c = 1.0 + pp('contrast') * f[:, 1]
  s = 1.0 + pp('saturation') * f[:, 2]
  h = pp('hue') * f[:, 3]
  order = tf.argsort(u[:, U_ORDER][:, :n_ops], axis=-1)  # order[:, i]: op of slot i.
  lo, hi = (_per_pipeline(v, pipeline) for v in zip(*[p.blur_sigma for p in params]))
  sigma = lo + (hi - lo) * u[:, U_SIGMA]

  outs = []
  for i in range(n):
    x = images[i]
    bi, ci, si, hi_ = b[i], c[i], s[i], h[i]

    def jitter(x, i=i, bi=bi, ci=ci, si=si, hi_=hi_):
      branches = [
          lambda y: tf.clip_by_value(bi * y, 0.0, 1.0),
          lambda y: tf.clip_by_value(
              ci * y + (1.0 - ci) * tf.reduce_mean(grey_level(y)), 0.0, 1.0),
          lambda y: tf.clip_by_value(si * y + (1.0 - si) * grey_level(y), 0.0, 1.0),
          lambda y: adjust_hue(y, hi_),
      ][:n_ops]
      for slot in range(n_ops):
        x = tf.switch_case(order[i, slot], [lambda fn=fn, y=x: fn(y) for fn in branches])
      return x

    x = tf.cond(u[i, U_JITTER] < jitter_p[i], lambda x=x, j=jitter: j(x), lambda x=x: x)
    if channels == 3:
      x = tf.cond(u[i, U_GREY] < grey_p[i],
                  lambda x=x: tf.tile(grey_level(x), [1, 1, 3]), lambda x=x: x)
    if ksize > 1:
      x = tf.cond(u[i, U_BLUR] < blur_p[i],
                  lambda x=x, sg=sigma[i]: _blur_one(x, sg, ksize), lambda x=x: x)
    x = tf.cond(u[i, U_SOLARIZE] < sol_p[i],
                lambda x=x: tf.where(x >= 0.5, 1.0 - x, x), lambda x=x: x)
    outs.append(x)
  return tf.stack(outs)


def to_channels_batch(images: tf.Tensor, channels: int) -> tf.Tensor:
  """:func:`to_channels` for ``[..., H, W, C]`` tensors."""
  have = images.shape[-1]
  if have == channels:
    return images
  if have == 1 and channels == 3:
    return tf.repeat(images, 3, axis=-1)
  if have == 3 and channels == 1:
    return grey_level(images)
  raise ValueError(f'Cannot convert {have} channels to {channels}.')
