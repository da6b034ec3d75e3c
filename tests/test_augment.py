"""The device augmentation against independent NumPy re-derivations."""

import colorsys
import dataclasses
import gzip
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smog_jax import augment
from smog_jax.random_streams import Stream

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'fashion_mnist')
LUMA = np.array([0.299, 0.587, 0.114])
PLAIN = augment.ColourParams(
    brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, jitter_prob=0.0,
    grayscale_prob=0.0, blur_prob=0.0, blur_sigma=(0.1, 2.0),
    solarize_prob=0.0)


def _spec(a=PLAIN, b=PLAIN, channels=3, mean=0.0, std=1.0):
  return augment.AugmentSpec(pipelines=(a, b), mean=(mean,) * channels,
                             std=(std,) * channels, channels=channels, seed=5)


def _colour_images(n=4, size=6, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3),
                                              dtype=np.uint8)


def _fashion_images(n=4):
  with gzip.open(os.path.join(FIXTURE, 'train-images-idx3-ubyte.gz')) as f:
    raw = np.frombuffer(f.read(), np.uint8, offset=16)
  return raw.reshape(-1, 28, 28, 1)[:n]


# NumPy re-derivations (torchvision semantics, colorsys for HSV).


def _np_grey(x):
  return x if x.shape[-1] == 1 else (x @ LUMA)[..., None]


def _np_hue(x, delta):
  out = np.empty_like(x)
  for idx in np.ndindex(x.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*x[idx])
    out[idx] = colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)
  return np.clip(out, 0, 1)


def _np_jitter(x, draws, p):
  f = 2 * draws[1:5] - 1
  ops = [lambda y: np.clip(y * (1 + p.brightness * f[0]), 0, 1),
         lambda y: np.clip(_np_grey(y).mean() + (1 + p.contrast * f[1]) *
                           (y - _np_grey(y).mean()), 0, 1),
         lambda y: np.clip(_np_grey(y) + (1 + p.saturation * f[2]) *
                           (y - _np_grey(y)), 0, 1),
         lambda y: _np_hue(y, p.hue * f[3])][:4 if x.shape[-1] == 3 else 2]
  for op in np.argsort(draws[5:5 + len(ops)]):
    x = ops[op](x)
  return x


def _np_blur(x, sigma, radius):
  taps = np.arange(-radius, radius + 1)
  k = np.exp(-0.5 * (taps / sigma) ** 2)
  k /= k.sum()
  padded = np.pad(x, ((radius, radius), (radius, radius), (0, 0)), 'edge')
  h, w = x.shape[:2]
  rows = sum(k[t] * padded[t:t + h] for t in range(len(taps)))
  return sum(k[t] * rows[:, t:t + w] for t in range(len(taps)))


def _np_augment(image, draws, p, spec):
  x = image.astype(np.float64) / 255.0
  if draws[0] < p.jitter_prob:
    x = _np_jitter(x, draws, p)
  if x.shape[-1] == 3 and draws[9] < p.grayscale_prob:
    x = np.repeat(_np_grey(x), 3, axis=-1)
  if draws[10] < p.blur_prob:
    lo, hi = p.blur_sigma
    x = _np_blur(x, lo + (hi - lo) * draws[11], int(np.ceil(3 * hi)))
  if draws[12] < p.solarize_prob:
    x = np.where(x >= 0.5, 1 - x, x)
  return (x - np.array(spec.mean)) / np.array(spec.std)


def _draws(spec, stream, epoch, index, pipeline, crop):
  """The uniforms of one crop, from the documented key derivation."""
  key = jax.random.fold_in(jax.random.key(spec.seed), stream)
  for value in (epoch, index, pipeline, crop):
    key = jax.random.fold_in(key, value)
  return np.asarray(jax.random.uniform(key, (13,)), np.float64)


def test_hsv_round_trip_and_colorsys():
  x = np.random.default_rng(1).uniform(0, 1, (50, 3)).astype(np.float32)
  x[:3] = [[1, 0, 0], [0.5, 0.5, 0.5], [0, 0, 0]]  # Pure hue, grey, black.
  hsv = np.asarray(augment.rgb_to_hsv(jnp.asarray(x)))
  expected = np.array([colorsys.rgb_to_hsv(*p) for p in x])
  np.testing.assert_allclose(hsv, expected, atol=1e-5)
  np.testing.assert_allclose(augment.hsv_to_rgb(hsv), x, atol=1e-5)


def test_hue_rotation_permutes_primaries():
  primaries = jnp.eye(3)[:, None, :]  # [3, 1, 3]: red, green, blue pixels.
  rotated = np.asarray(augment.adjust_hue(primaries, 1 / 3))
  np.testing.assert_allclose(rotated[:, 0], np.eye(3)[[1, 2, 0]], atol=1e-5)


def test_grey_level_is_luma():
  x = _colour_images()[0] / 255.0
  np.testing.assert_allclose(augment.grey_level(jnp.asarray(x)),
                             _np_grey(x), atol=1e-6)


@pytest.mark.parametrize('size,sigma', [(28, 2.0), (14, 0.1), (9, 1.3)])
def test_blur_taps_and_edges_match_numpy(size, sigma):
  rows = np.asarray(augment.blur_matrix(size, jnp.float32(sigma), 6))
  np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-6)
  # An interior row holds the 13 taps of the normalised Gaussian.
  taps = np.exp(-0.5 * (np.arange(-6, 7) / sigma) ** 2)
  if size > 13:
    np.testing.assert_allclose(rows[6, :13], taps / taps.sum(), rtol=1e-5,
                               atol=1e-30)
  x = np.random.default_rng(2).uniform(0, 1, (size, size, 2))
  out = augment.gaussian_blur(jnp.asarray(x, jnp.float32), jnp.float32(sigma),
                              2.0)
  np.testing.assert_allclose(out, _np_blur(x, sigma, 6), atol=1e-5)


def test_solarize_threshold():
  x = jnp.asarray([0.0, 0.49, 0.5, 0.75, 1.0])
  np.testing.assert_allclose(augment.solarize(x), [0, 0.49, 0.5, 0.25, 0.0],
                             atol=1e-7)


@pytest.mark.parametrize('channels', [1, 3])
def test_jitter_applies_ops_in_the_crops_random_order(channels):
  p = dataclasses.replace(PLAIN, brightness=0.8, contrast=0.8,
                          saturation=0.8, hue=0.3)
  params = augment._pipeline_params(_spec(p, p, channels), 0)  # pylint: disable=protected-access
  images = _colour_images() if channels == 3 else _fashion_images()
  orders = set()
  for i, image in enumerate(images):
    draws = _draws(_spec(channels=channels), 0, 0, i, 0, 0)
    x = image / 255.0
    out = augment.colour_jitter(jnp.asarray(x, jnp.float32),
                                jnp.asarray(draws, jnp.float32), params)
    np.testing.assert_allclose(out, _np_jitter(x, draws, p), atol=2e-5)
    orders.add(tuple(np.argsort(draws[5:5 + (4 if channels == 3 else 2)])))
  assert len(orders) > 1  # The order really varies between crops.


@pytest.mark.parametrize('channels', [1, 3])
def test_augment_views_match_numpy_crop_by_crop(channels):
  a = dataclasses.replace(PLAIN, jitter_prob=0.8, grayscale_prob=0.2,
                          blur_prob=1.0, blur_sigma=(0.1, 2.0))
  b = dataclasses.replace(a, blur_prob=0.1, solarize_prob=0.5)
  spec = _spec(a, b, channels, mean=0.4, std=0.3)
  images = (_colour_images(n=3, size=8) if channels == 3 else
            _fashion_images(n=3))[:, None].repeat(2, axis=1)  # [3, 2, S, S, C]
  epoch, index = np.array([0, 1, 4]), np.array([7, 3, 9])
  for pipeline in (0, 1):
    out = np.asarray(augment.augment_views(
        jnp.asarray(images), spec, stream=Stream.TRAIN,
        epoch=jnp.asarray(epoch), index=jnp.asarray(index),
        pipeline=jnp.int32(pipeline), first_crop=2))
    for e in range(3):
      for c in range(2):
        draws = _draws(spec, Stream.TRAIN, epoch[e], index[e], pipeline, 2 + c)
        expected = _np_augment(images[e, c], draws, spec.pipelines[pipeline],
                               spec)
        np.testing.assert_allclose(out[e, c], expected, atol=1e-4)


def test_a_crop_depends_only_on_its_key_not_on_the_batch():
  spec = _spec(dataclasses.replace(PLAIN, jitter_prob=0.8, blur_prob=0.5,
                                   grayscale_prob=0.5, solarize_prob=0.5))
  images = jnp.asarray(_colour_images(n=6, size=10)[:, None])
  index = jnp.arange(6) + 10
  views = lambda im, idx: np.asarray(augment.augment_views(
      im, spec, stream=Stream.TRAIN, epoch=jnp.zeros_like(idx),
      index=idx, pipeline=jnp.int32(0)))
  whole = views(images, index)
  # Equal up to float32 rounding: batched matmuls may tile differently.
  np.testing.assert_allclose(views(images[2:5], index[2:5]), whole[2:5],
                             rtol=0, atol=1e-6)
  # Another example index (or stream) gives other randomness.
  assert not np.allclose(views(images[:1], index[1:2]), whole[:1])


def test_probabilities_and_the_online_target_swap():
  never = PLAIN
  always = dataclasses.replace(PLAIN, solarize_prob=1.0)
  spec = _spec(never, always, channels=1)
  images = jnp.asarray(_fashion_images(n=8)[:, None].repeat(2, axis=1))
  batch = dict(online_large=images, target_large=images,
               online_small=images[:, :0], epoch=jnp.zeros(8, jnp.int32),
               index=jnp.arange(8))
  plain = np.asarray(images) / 255.0
  solarized = np.where(plain >= 0.5, 1 - plain, plain)
  even = augment.train_views(batch, jnp.int32(4), spec)
  odd = augment.train_views(batch, jnp.int32(5), spec)
  np.testing.assert_allclose(even['online_large'], plain, atol=1e-6)
  np.testing.assert_allclose(even['target_large'], solarized, atol=1e-6)
  np.testing.assert_allclose(odd['online_large'], solarized, atol=1e-6)
  np.testing.assert_allclose(odd['target_large'], plain, atol=1e-6)
  assert 'online_small' not in even
  # p = 0.2: about a fifth of 4000 crops go grey.
  grey = dataclasses.replace(PLAIN, grayscale_prob=0.2)
  out = augment.augment_views(
      jnp.asarray(_colour_images(n=2000, size=2)[:, None].repeat(2, 1)),
      _spec(grey, grey), stream=0, epoch=jnp.zeros(2000, jnp.int32),
      index=jnp.arange(2000), pipeline=jnp.int32(0))
  is_grey = np.all(np.ptp(np.asarray(out), axis=-1) < 1e-6, axis=(-1, -2))
  assert 0.17 < is_grey.mean() < 0.23
