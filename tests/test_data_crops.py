"""Host crop geometry against independent NumPy expectations."""

import numpy as np
import pytest
import tensorflow as tf

from smog_jax.data import crops


def _uniforms(n, seed=0):
  return tf.constant(np.random.default_rng(seed).uniform(
      0, 1, (n, crops.CROP_ATTEMPTS, 4)), tf.float32)


@pytest.mark.parametrize('h,w,scale', [(20, 24, (0.2, 1.0)),
                                       (375, 500, (0.05, 0.2)),
                                       (28, 28, (0.05, 0.2))])
def test_windows_inside_the_image_with_area_and_aspect_in_range(h, w, scale):
  ratio = (3 / 4, 4 / 3)
  windows = crops.crop_windows(_uniforms(200), h, w, scale, ratio).numpy()
  y, x, ch, cw = windows.T
  assert np.all((y >= 0) & (x >= 0) & (y + ch <= h) & (x + cw <= w))
  assert np.all((ch >= 1) & (cw >= 1))
  area, aspect = ch * cw / (h * w), cw / ch
  # Up to the rounding of each side to whole pixels.
  slack = 2 / min(h, w) ** 0.5
  sampled = ((area >= scale[0] * 0.8 - slack) & (area <= scale[1] + slack) &
             (aspect >= ratio[0] * 0.8) & (aspect <= ratio[1] * 1.25))
  assert sampled.mean() > 0.9
  assert len({tuple(v) for v in windows}) > 100  # Really random.


def test_fallback_is_the_largest_centred_crop_in_ratio():
  windows = crops.crop_windows(_uniforms(5), 10, 300, (0.2, 1.0),
                               (3 / 4, 4 / 3)).numpy()
  cw = round(10 * 4 / 3)  # No window of area >= 20 % fits a 10 x 300 image.
  np.testing.assert_array_equal(windows, [[0, (300 - cw) // 2, 10, cw]] * 5)


def test_centre_window():
  np.testing.assert_array_equal(crops.centre_window(256, 320, 224 / 256),
                                [16, 48, 224, 224])


@pytest.mark.parametrize('antialias,weights', [
    (False, [0.5, 0.5]),  # Half-pixel centres: the mean of each 2 x 2 block.
    (True, [1 / 8, 3 / 8, 3 / 8, 1 / 8]),  # Triangle filter of width 2.
])
def test_views_are_bilinear_halvings_and_flips(antialias, weights):
  img = np.random.default_rng(1).integers(0, 256, (20, 24, 3), np.uint8)
  windows = tf.constant([[2, 4, 16, 16], [2, 4, 8, 8]], tf.int32)
  out = crops.crop_views(img, windows, tf.constant([False, True]), 8,
                         antialias).numpy()
  assert out.dtype == np.uint8 and out.shape == (2, 8, 8, 3)
  np.testing.assert_array_equal(out[1], img[2:10, 4:12][:, ::-1])  # Size kept.
  # Halving, NumPy: separable weights around pixels 2i, 2i+1.
  k = np.asarray(weights)
  r = (len(k) - 2) // 2
  src = np.pad(img[2:18, 4:20].astype(np.float64), ((r, r), (r, r), (0, 0)),
               'edge')
  rows = sum(k[t] * src[t:t + 16 + 2 * r - len(k) + 1:2] for t in range(len(k)))
  both = sum(k[t] * rows[:, t:t + 16 + 2 * r - len(k) + 1:2]
             for t in range(len(k)))
  # Interior pixels: at the border TF renormalises the filter instead.
  np.testing.assert_allclose(out[0, 1:-1, 1:-1], np.round(both)[1:-1, 1:-1],
                             atol=1)

