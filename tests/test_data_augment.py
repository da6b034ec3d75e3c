"""Augmentation ops against independent NumPy expectations, eagerly and inside tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from smog_jax.data import augment

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _seed(i):
  return tf.constant([7, i], tf.int64)


def _image(h=20, w=24, c=3, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (h, w, c)).astype(np.float32)


def _in_tf_data(fn, *args):
  """Runs ``fn(*args)`` inside a tf.data map (graph mode), returns the numpy result."""
  ds = tf.data.Dataset.from_tensors(tuple(tf.convert_to_tensor(a) for a in args)).map(fn)
  return next(iter(ds.as_numpy_iterator()))


@pytest.mark.parametrize('h,w,scale', [(20, 24, (0.2, 1.0)), (375, 500, (0.05, 0.2)),
                                       (28, 28, (0.05, 0.2)), (10, 300, (0.2, 1.0))])
def test_crop_window_inside_image_and_in_range(h, w, scale):
  ratio = (3 / 4, 4 / 3)
  n_random = 0
  for i in range(100):
    y, x, ch, cw = augment.sample_crop_window(_seed(i), h, w, scale, ratio).numpy()
    assert 0 <= y and y + ch <= h and 0 <= x and x + cw <= w and ch >= 1 and cw >= 1
    area = ch * cw / (h * w)
    aspect = cw / ch
    in_range = (scale[0] * 0.8 - 2 / (h * w) ** 0.5 <= area <= scale[1] * 1.2 + 0.05
                and ratio[0] * 0.8 <= aspect <= ratio[1] * 1.25)
    # Either a sampled window (area/aspect within range up to rounding) or the fallback
    # centre crop (full height or width).
    assert in_range or ch == h or cw == w
    n_random += in_range
  if h == 10:  # Aspect 30: no window fits; torchvision falls back to a centred crop.
    y, x, ch, cw = augment.sample_crop_window(_seed(0), h, w, scale, ratio).numpy()
    assert (ch, cw) == (10, round(10 * 4 / 3)) and x == (300 - cw) // 2
  else:
    assert n_random > 90


def test_crop_window_deterministic_and_seed_dependent():
  a = augment.sample_crop_window(_seed(1), 100, 100, (0.2, 1.0))
  b = augment.sample_crop_window(_seed(1), 100, 100, (0.2, 1.0))
  c = augment.sample_crop_window(_seed(2), 100, 100, (0.2, 1.0))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_crop_and_centre_window_match_numpy_slices():
  img = _image(30, 40)
  win = np.array([3, 5, 10, 12], np.int32)
  np.testing.assert_array_equal(augment.crop(img, win), img[3:13, 5:17])
  np.testing.assert_array_equal(augment.centre_crop_window(256, 320, 224 / 256),
                                [16, 48, 224, 224])


def test_resize_identity_and_range():
  img = _image(16, 16) * 255
  np.testing.assert_allclose(augment.resize(img, 16), img, atol=1e-3)
  up = augment.resize(img, 40).numpy()
  assert up.shape == (40, 40, 3) and up.min() >= -1e-3 and up.max() <= 255 + 1e-3


def test_flip_probabilities():
  img = _image()
  np.testing.assert_array_equal(augment.maybe_flip(img, _seed(0), 0.0), img)
  np.testing.assert_array_equal(augment.maybe_flip(img, _seed(0), 1.0), img[:, ::-1])
  flips = [not np.array_equal(augment.maybe_flip(img, _seed(i), 0.5), img) for i in range(200)]
  assert 70 < sum(flips) < 130


def test_grayscale_matches_luma():
  img = _image()
  expected = np.repeat((img @ LUMA)[..., None], 3, axis=-1)
  np.testing.assert_allclose(augment.grayscale(img), expected, atol=1e-6)
  np.testing.assert_allclose(_in_tf_data(augment.grayscale, img), expected, atol=1e-6)


def test_brightness_contrast_saturation_match_numpy():
  img = _image()
  np.testing.assert_allclose(augment.adjust_brightness(img, 1.3),
                             np.clip(img * 1.3, 0, 1), atol=1e-6)
  mean = (img @ LUMA).mean()
  np.testing.assert_allclose(augment.adjust_contrast(img, 0.7),
                             np.clip(mean + 0.7 * (img - mean), 0, 1), atol=1e-5)
  grey = (img @ LUMA)[..., None]
  np.testing.assert_allclose(augment.adjust_saturation(img, 1.2),
                             np.clip(grey + 1.2 * (img - grey), 0, 1), atol=1e-5)
  grey_img = img[..., :1]
  np.testing.assert_allclose(augment.adjust_contrast(grey_img, 1.4),
                             np.clip(grey_img.mean() + 1.4 * (grey_img - grey_img.mean()), 0, 1),
                             atol=1e-5)


def test_hue_shift_permutes_primary_colours():
  red = np.zeros((2, 2, 3), np.float32)
  red[..., 0] = 1.0
  # A third of a turn maps pure red to pure green.
  np.testing.assert_allclose(augment.adjust_hue(red, 1 / 3)[0, 0], [0, 1, 0], atol=1e-5)


def test_color_jitter_zero_strength_is_identity_and_output_in_range():
  img = _image()
  zero = augment.ViewParams(brightness=0, contrast=0, saturation=0, hue=0)
  np.testing.assert_allclose(augment.color_jitter(img, _seed(3), zero), img, atol=1e-5)
  out = augment.color_jitter(img, _seed(3), augment.ViewParams()).numpy()
  assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
  assert not np.allclose(out, img)
  grey = img[..., :1]
  out1 = augment.color_jitter(grey, _seed(3), augment.ViewParams()).numpy()
  assert out1.shape == grey.shape


def _numpy_blur(img, sigma, k):
  r = k // 2
  x = np.arange(-r, r + 1, dtype=np.float64)
  kern = np.exp(-0.5 * (x / sigma) ** 2)
  kern /= kern.sum()
  p = np.pad(img.astype(np.float64), ((r, r), (r, r), (0, 0)), mode='reflect')
  h = sum(kern[i] * p[:, i:i + img.shape[1]] for i in range(k))
  return sum(kern[i] * h[i:i + img.shape[0]] for i in range(k))


def test_gaussian_blur_matches_numpy():
  img = _image(24, 24)
  assert augment.gaussian_kernel_size(224) == 23
  assert augment.gaussian_kernel_size(28) == 3
  assert augment.gaussian_kernel_size(14) == 1
  for sigma, k in [(0.5, 3), (1.7, 9)]:
    np.testing.assert_allclose(augment.gaussian_blur(img, tf.constant(sigma), k),
                               _numpy_blur(img, sigma, k), atol=1e-5)
  np.testing.assert_array_equal(augment.gaussian_blur(img, tf.constant(1.0), 1), img)
  const = np.full((10, 10, 1), 0.3, np.float32)
  np.testing.assert_allclose(augment.gaussian_blur(const, tf.constant(2.0), 5), const, atol=1e-6)


def test_solarize_and_normalize_match_numpy():
  img = _image()
  np.testing.assert_allclose(augment.solarize(img), np.where(img >= 0.5, 1 - img, img))
  mean, std = (0.485, 0.456, 0.406), (0.228, 0.224, 0.225)
  np.testing.assert_allclose(augment.normalize(img, mean, std),
                             (img - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-6)


def test_pipeline_probabilities_zero_and_one():
  img = _image(28, 28)
  off = augment.ViewParams(jitter_prob=0, grayscale_prob=0, blur_prob=0, solarize_prob=0,
                           flip_prob=0)
  np.testing.assert_array_equal(augment.augment_colour_and_blur(img, _seed(0), off), img)
  # Solarize only, p=1: exactly the NumPy solarization, eagerly and inside tf.data.
  sol = augment.ViewParams(jitter_prob=0, grayscale_prob=0, blur_prob=0, solarize_prob=1,
                           flip_prob=0)
  expected = np.where(img >= 0.5, 1 - img, img)
  np.testing.assert_allclose(augment.augment_colour_and_blur(img, _seed(0), sol), expected)
  fn = lambda x, s: augment.augment_colour_and_blur(x, s, sol)
  np.testing.assert_allclose(_in_tf_data(fn, img, _seed(0)), expected)
  # Grayscale only, p=1.
  gs = augment.ViewParams(jitter_prob=0, grayscale_prob=1, blur_prob=0, solarize_prob=0,
                          flip_prob=0)
  np.testing.assert_allclose(augment.augment_colour_and_blur(img, _seed(0), gs),
                             np.repeat((img @ LUMA)[..., None], 3, -1), atol=1e-6)
  # Tensor-valued probabilities (how the pipeline selects A / B in-graph).
  np.testing.assert_allclose(
      augment.augment_colour_and_blur(img, _seed(0), off, solarize_prob=tf.constant(1.0)),
      expected)


def test_full_pipeline_eager_equals_tf_data_and_in_range():
  img = _image(28, 28)
  params = augment.ViewParams()
  eager = augment.augment_colour_and_blur(img, _seed(5), params).numpy()
  graph = _in_tf_data(lambda x, s: augment.augment_colour_and_blur(x, s, params), img, _seed(5))
  np.testing.assert_allclose(eager, graph, atol=1e-6)
  assert eager.dtype == np.float32 and eager.min() >= 0 and eager.max() <= 1


def test_to_channels():
  grey = _image(c=1)
  np.testing.assert_array_equal(augment.to_channels(grey, 3), np.repeat(grey, 3, -1))
  rgb = _image()
  np.testing.assert_allclose(augment.to_channels(rgb, 1), (rgb @ LUMA)[..., None], atol=1e-6)


def test_augment_views_batch_invariant_and_in_range():
  """A crop's result must not depend on the other crops of its batch (process invariance)."""
  rng = np.random.default_rng(0)
  params = [augment.ViewParams(), augment.ViewParams(blur_prob=0.1, solarize_prob=0.2)]
  for size, c in [(28, 1), (24, 3), (96, 3)]:
    x = tf.constant(rng.uniform(0, 1, (12, size, size, c)).astype(np.float32))
    u = tf.constant(rng.uniform(0, 1, (12, augment.NUM_UNIFORMS)).astype(np.float32))
    p = tf.constant(rng.integers(0, 2, 12), tf.int32)
    fn = tf.function(lambda a, b, q: augment.augment_views(a, b, q, params))
    whole = fn(x, u, p).numpy()
    assert whole.min() >= 0 and whole.max() <= 1
    for lo, hi in [(0, 1), (3, 8), (7, 12)]:
      np.testing.assert_array_equal(fn(x[lo:hi], u[lo:hi], p[lo:hi]).numpy(), whole[lo:hi])


def test_augment_views_identity_solarize_and_grey():
  img = _image(24, 24)[None]
  u = np.ones((1, augment.NUM_UNIFORMS), np.float32) * 0.99  # Nothing applied...
  off = augment.ViewParams(jitter_prob=0.5, grayscale_prob=0.5, blur_prob=0.5,
                           solarize_prob=0.5)
  np.testing.assert_array_equal(augment.augment_views(img, u, tf.zeros([1], tf.int32),
                                                      [off, off]), img)
  u[0, augment.U_SOLARIZE] = 0.0  # ...but solarize.
  np.testing.assert_allclose(augment.augment_views(img, u, tf.zeros([1], tf.int32), [off, off]),
                             np.where(img >= 0.5, 1 - img, img))
  u[0, augment.U_SOLARIZE], u[0, augment.U_GREY] = 0.99, 0.0  # Grayscale only.
  np.testing.assert_allclose(augment.augment_views(img, u, tf.zeros([1], tf.int32), [off, off]),
                             np.repeat((img @ LUMA)[..., None], 3, -1), atol=1e-6)
  # Blur only: the per-image blur with the same sigma.
  u[0, augment.U_GREY], u[0, augment.U_BLUR], u[0, augment.U_SIGMA] = 0.99, 0.0, 0.5
  sigma = 0.1 + 1.9 * 0.5
  big = _image(40, 40)[None]
  np.testing.assert_allclose(
      augment.augment_views(big, u, tf.zeros([1], tf.int32), [off, off])[0],
      _numpy_blur(big[0], sigma, augment.gaussian_kernel_size(40)), atol=1e-5)


def test_crop_resize_many_matches_resize_and_flip():
  img = (np.random.default_rng(1).uniform(0, 255, (30, 40, 3))).astype(np.uint8)
  win = tf.constant([[3, 5, 20, 24], [0, 0, 30, 40]], tf.int32)
  out = augment.crop_resize_many(img, win, tf.constant([False, True]), 16).numpy()
  ref0 = tf.image.resize(tf.cast(img[3:23, 5:29], tf.float32), (16, 16), antialias=False)
  np.testing.assert_allclose(out[0], np.round(ref0), atol=1.01)
  ref1 = tf.image.resize(tf.cast(img[:, ::-1], tf.float32), (16, 16), antialias=False)
  np.testing.assert_allclose(out[1], np.round(ref1), atol=1.01)
  up = augment.crop_resize_many(img, tf.constant([[0, 0, 4, 4]], tf.int32),
                                tf.constant([False]), 16).numpy()
  # Upscaling: sample points up to half a pixel past the window's far edge read the image's
  # next pixels (torchvision clamps to the window); at the image border they clamp.
  ref = np.round(tf.image.resize(tf.cast(img[:4, :4], tf.float32), (16, 16), antialias=False))
  np.testing.assert_allclose(up[0, :14, :14], ref[:14, :14], atol=1.01)


def test_augment_views_per_crop_equals_vectorised():
  """The per-crop control-flow path (large crops) gives the slot-vectorised result.

  Equal up to the float rounding of the blur, whose matmuls are arranged differently (HWC vs
  CHW); each path on its own is deterministic and batch-invariant.
  """
  rng = np.random.default_rng(3)
  params = [augment.ViewParams(), augment.ViewParams(blur_prob=0.1, solarize_prob=0.2)]
  for size, c, n in [(72, 3, 10), (64, 1, 4)]:
    x = tf.constant(rng.uniform(0, 1, (n, size, size, c)).astype(np.float32))
    u = tf.constant(rng.uniform(0, 1, (n, augment.NUM_UNIFORMS)).astype(np.float32))
    p = tf.constant(rng.integers(0, 2, n), tf.int32)
    vec = tf.function(lambda a, b, q: augment.augment_views(a, b, q, params))(x, u, p)
    per = tf.function(lambda a, b, q: augment.augment_views_per_crop(a, b, q, params))(x, u, p)
    np.testing.assert_allclose(per.numpy(), vec.numpy(), rtol=0, atol=1e-6)
