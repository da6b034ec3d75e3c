"""Photometric augmentation of the multi-crop views, on the device, in JAX.

The host pipeline (smog_jax/data) decodes each image once and emits uint8
random-resized crops, already flipped; everything that changes pixel values
runs here, inside the jitted train step (and the memory-bank fill), so XLA
fuses it with the network's first layers and the host never touches floats:

  colour jitter (p), grayscale (p), Gaussian blur (p), solarize (p), normalise

Evaluation crops get the channel conversion and normalisation only
(`eval_views`, inside the jitted feature extraction).

Semantics follow torchvision, which the PyTorch reference uses: brightness,
contrast and saturation blend with black, the image's mean grey level and the
per-pixel grey image, each clipped to [0, 1]; hue rotates the HSV hue; the
four jitter ops run in a random order per crop; grey levels are ITU-R 601-2
luma; solarize inverts pixels >= 0.5. The blur is a full Gaussian, as PIL's
`GaussianBlur(radius=sigma)` of the reference: sigma in pixels of the crop,
taps out to 3 * max sigma, edge pixels repeated past the border.
Single-channel images get brightness and contrast only (saturation, hue and
grayscale are undefined without colour).

Every random number of a crop comes from its own key, folded from
(seed, stream, epoch, example index, pipeline, crop) by smog_jax.random_streams,
so a crop's pixels depend on nothing else in the batch: not on the batch size,
the device count or the process count.
"""

from __future__ import annotations

import dataclasses
import math
import jax
import jax.numpy as jnp

from smog_jax import random_streams
from smog_jax.random_streams import Stream

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Layout of a crop's uniform draws.
_JITTER, _FACTORS, _ORDER, _GREY, _BLUR, _SIGMA, _SOLARIZE = (
    0, slice(1, 5), slice(5, 9), 9, 10, 11, 12)
_NUM_DRAWS = 13


@dataclasses.dataclass(frozen=True)
class ColourParams:
  """Photometric parameters of one augmentation pipeline (A or B).

  Attributes:
    brightness, contrast, saturation: jitter strengths (factor in
      [1 - x, 1 + x]).
    hue: maximum hue rotation, in turns of the colour wheel.
    jitter_prob: probability of the colour jitter.
    grayscale_prob: probability of converting to grey.
    blur_prob: probability of the Gaussian blur.
    blur_sigma: (min, max) blur standard deviation, in pixels of the crop.
    solarize_prob: probability of solarization.
  """
  brightness: float
  contrast: float
  saturation: float
  hue: float
  jitter_prob: float
  grayscale_prob: float
  blur_prob: float
  blur_sigma: tuple[float, float]
  solarize_prob: float


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """Everything the device augmentation needs (static under jit).

  Attributes:
    pipelines: the parameters of pipelines A and B.
    mean, std: per-channel normalisation, `channels` values each.
    channels: channels of the output (grey sources are replicated, RGB sources
      reduced to luma, to reach it).
    seed: the run's seed; keys every crop together with its position.
  """
  pipelines: tuple[ColourParams, ColourParams]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  channels: int
  seed: int


def crop_keys(spec: AugmentSpec, stream: Stream, epoch: jax.Array,
              index: jax.Array, pipeline: jax.Array, crops: jax.Array
              ) -> jax.Array:
  """`[B, n]` keys of crops `crops [n]` of examples `index [B]` in `epoch [B]`."""
  one = lambda e, i, c: random_streams.crop_key(spec.seed, stream, e, i,
                                                pipeline, c)
  return jax.vmap(lambda e, i: jax.vmap(lambda c: one(e, i, c))(crops))(
      epoch, index)


def to_unit_float(image: jax.Array, channels: int) -> jax.Array:
  """uint8 `[..., C_src]` -> float32 in [0, 1] with `channels` channels."""
  x = image.astype(jnp.float32) * (1.0 / 255.0)
  if x.shape[-1] == channels:
    return x
  if x.shape[-1] == 1 and channels == 3:
    return jnp.repeat(x, 3, axis=-1)
  if x.shape[-1] == 3 and channels == 1:
    return grey_level(x)
  raise ValueError(f'Cannot convert {x.shape[-1]} channels to {channels}.')


def grey_level(image: jax.Array) -> jax.Array:
  """Luma `[H, W, 1]` of `[H, W, C]` (the image itself when single-channel)."""
  if image.shape[-1] == 1:
    return image
  return jnp.tensordot(image, jnp.asarray(LUMA_WEIGHTS), axes=1)[..., None]


def normalise(image: jax.Array, spec: AugmentSpec) -> jax.Array:
  """Float `[..., spec.channels]` in [0, 1] -> `(image - mean) / std`."""
  return (image - jnp.asarray(spec.mean)) / jnp.asarray(spec.std)


def eval_views(images: jax.Array, spec: AugmentSpec) -> jax.Array:
  """uint8 evaluation crops `[..., C_src]` -> normalised float32 `[..., C]`."""
  return normalise(to_unit_float(images, spec.channels), spec)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Blend with black."""
  return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Blend with the mean grey level of the whole image."""
  mean = jnp.mean(grey_level(image))
  return jnp.clip(mean + factor * (image - mean), 0.0, 1.0)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Blend with the per-pixel grey image."""
  grey = grey_level(image)
  return jnp.clip(grey + factor * (image - grey), 0.0, 1.0)


def rgb_to_hsv(image: jax.Array) -> jax.Array:
  """`[..., 3]` RGB in [0, 1] -> HSV, hue in turns [0, 1)."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  value = jnp.max(image, axis=-1)
  chroma = value - jnp.min(image, axis=-1)
  safe = jnp.where(chroma > 0, chroma, 1.0)
  hue = jnp.where(value == r, (g - b) / safe,
                  jnp.where(value == g, 2.0 + (b - r) / safe,
                            4.0 + (r - g) / safe))
  hue = jnp.where(chroma > 0, jnp.mod(hue / 6.0, 1.0), 0.0)
  saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0),
                         0.0)
  return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(image: jax.Array) -> jax.Array:
  """Inverse of `rgb_to_hsv`."""
  hue, saturation, value = image[..., 0], image[..., 1], image[..., 2]
  # Each channel n is v - v*s*clip(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6.
  k = jnp.mod(jnp.asarray([5.0, 3.0, 1.0]) + 6.0 * hue[..., None], 6.0)
  ramp = jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  return value[..., None] * (1.0 - saturation[..., None] * ramp)


def adjust_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
  """Rotates the hue by `delta` turns."""
  hsv = rgb_to_hsv(image)
  hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + delta, 1.0))
  return jnp.clip(hsv_to_rgb(hsv), 0.0, 1.0)


def colour_jitter(image: jax.Array, draws: jax.Array,
                  params: dict[str, jax.Array]) -> jax.Array:
  """Brightness, contrast, saturation and hue jitter in a random order."""
  f = 2.0 * draws[_FACTORS] - 1.0
  ops = [
      lambda x: adjust_brightness(x, 1.0 + params['brightness'] * f[0]),
      lambda x: adjust_contrast(x, 1.0 + params['contrast'] * f[1]),
      lambda x: adjust_saturation(x, 1.0 + params['saturation'] * f[2]),
      lambda x: adjust_hue(x, params['hue'] * f[3]),
  ]
  if image.shape[-1] == 1:
    ops = ops[:2]
  order = jnp.argsort(draws[_ORDER][:len(ops)])
  for slot in range(len(ops)):
    image = jax.lax.switch(order[slot], ops, image)
  return image


def blur_matrix(size: int, sigma: jax.Array, radius: int) -> jax.Array:
  """`[size, size]` matrix of a 1-D Gaussian blur with repeated edges.

  Row o holds the weights of input pixels for output pixel o: taps o - radius
  .. o + radius, those past the border folded onto the edge pixel.
  """
  taps = jnp.arange(-radius, radius + 1)
  weights = jnp.exp(-0.5 * jnp.square(taps / sigma))
  weights = weights / jnp.sum(weights)
  source = jnp.clip(jnp.arange(size)[:, None] + taps[None, :], 0, size - 1)
  return jnp.sum(jax.nn.one_hot(source, size) * weights[None, :, None], axis=1)


def gaussian_blur(image: jax.Array, sigma: jax.Array,
                  max_sigma: float) -> jax.Array:
  """Separable Gaussian blur of `[H, W, C]`, as two matrix products."""
  radius = max(1, math.ceil(3.0 * max_sigma))
  rows = blur_matrix(image.shape[0], sigma, radius)
  cols = blur_matrix(image.shape[1], sigma, radius)
  return jnp.einsum('ij,jkc,lk->ilc', rows, image, cols)


def solarize(image: jax.Array) -> jax.Array:
  """Inverts pixels >= 0.5."""
  return jnp.where(image >= 0.5, 1.0 - image, image)


def _pipeline_params(spec: AugmentSpec, pipeline: jax.Array
                     ) -> dict[str, jax.Array]:
  """The scalar parameters of `pipeline` (0 = A, 1 = B), a traced index."""
  names = ('brightness', 'contrast', 'saturation', 'hue', 'jitter_prob',
           'grayscale_prob', 'blur_prob', 'solarize_prob')
  params = {name: jnp.asarray([getattr(p, name) for p in spec.pipelines])
            [pipeline] for name in names}
  sigmas = jnp.asarray([p.blur_sigma for p in spec.pipelines])[pipeline]
  params['sigma_min'], params['sigma_max'] = sigmas[0], sigmas[1]
  return params


def augment_crop(image: jax.Array, key: jax.Array, params: dict[str, jax.Array],
                 spec: AugmentSpec) -> jax.Array:
  """One uint8 crop -> its augmented, normalised float32 view."""
  draws = jax.random.uniform(key, (_NUM_DRAWS,))
  x = to_unit_float(image, spec.channels)
  x = jnp.where(draws[_JITTER] < params['jitter_prob'],
                colour_jitter(x, draws, params), x)
  if spec.channels == 3:
    x = jnp.where(draws[_GREY] < params['grayscale_prob'],
                  jnp.broadcast_to(grey_level(x), x.shape), x)
  max_sigma = max(p.blur_sigma[1] for p in spec.pipelines)
  if max(p.blur_prob for p in spec.pipelines) > 0:
    sigma = params['sigma_min'] + (params['sigma_max'] - params['sigma_min']) * (
        draws[_SIGMA])
    x = jnp.where(draws[_BLUR] < params['blur_prob'],
                  gaussian_blur(x, sigma, max_sigma), x)
  x = jnp.where(draws[_SOLARIZE] < params['solarize_prob'], solarize(x), x)
  return normalise(x, spec)


def augment_views(images: jax.Array, spec: AugmentSpec, *, stream: Stream,
                  epoch: jax.Array, index: jax.Array, pipeline: jax.Array,
                  first_crop: int = 0) -> jax.Array:
  """Augments uint8 views `[B, n, S, S, C_src]` of one pipeline.

  Args:
    images: the host's crops, uint8.
    spec: the augmentation settings.
    stream: `Stream.TRAIN` or `Stream.BANK`.
    epoch: `[B]` epoch of each example.
    index: `[B]` example index in the training split.
    pipeline: 0 (A) or 1 (B), a scalar (may be traced).
    first_crop: crop id of view 0 (small crops follow the large ones).

  Returns:
    float32 `[B, n, S, S, spec.channels]`, normalised.
  """
  num_views = images.shape[1]
  crops = first_crop + jnp.arange(num_views)
  keys = crop_keys(spec, stream, epoch, index, pipeline, crops)
  params = _pipeline_params(spec, pipeline)
  one = lambda image, key: augment_crop(image, key, params, spec)
  return jax.vmap(jax.vmap(one))(images, keys)


@jax.named_scope('augmentation')  # Named in profiles.
def train_views(batch: dict[str, jax.Array], step: jax.Array,
                spec: AugmentSpec) -> dict[str, jax.Array]:
  """The float views of a training batch (layout: docs/architecture.md).

  Pipelines A and B swap every step: at even steps online = A, target = B.
  """
  online = jnp.mod(step, 2)
  views = dict(epoch=batch['epoch'], index=batch['index'],
               stream=Stream.TRAIN)
  num_large = batch['online_large'].shape[1]
  out = {
      'online_large': augment_views(batch['online_large'], spec,
                                    pipeline=online, **views),
      'target_large': augment_views(batch['target_large'], spec,
                                    pipeline=1 - online, **views),
  }
  if batch['online_small'].shape[1]:
    out['online_small'] = augment_views(batch['online_small'], spec,
                                        pipeline=online, first_crop=num_large,
                                        **views)
  return out
