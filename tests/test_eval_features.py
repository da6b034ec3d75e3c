"""Feature extraction: every example once, independent of the device count,
on uint8 crops normalised on the device."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from smog_jax import sharding
from smog_jax.data import default_data_config
from smog_jax.data import settings as settings_lib
from smog_jax.evaluation import features

LUMA = np.array([0.299, 0.587, 0.114])


class TinyCNN(nn.Module):
  """Conv-BN-ReLU-pool: BN statistics matter and it compiles fast (a ResNet
  adds nothing to what is tested here: batching, masks, sharding)."""

  @nn.compact
  def __call__(self, x, train=True):
    x = nn.Conv(8, (3, 3), (2, 2), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return jnp.mean(x, axis=(1, 2))


def _spec(dataset='fashion_mnist', **data):
  """The `AugmentSpec` a config's evaluation normalises with."""
  config = ml_collections.ConfigDict(dict(
      batch_size=8, seed=0, data=default_data_config(dataset)))
  config.data.update(data)
  return settings_lib.resolve(config).augment_spec


def _batches(images, labels, batch_size, mesh):
  return features.array_batches(dict(image=images, label=labels),
                                np.arange(len(labels)), batch_size, mesh)


def test_every_example_once_and_mesh_independent():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (37, 8, 8, 1), np.uint8)  # 37 % 16 != 0.
  labels = rng.integers(0, 10, 37)
  spec = _spec()
  backbone = TinyCNN()
  variables = backbone.init(jax.random.key(0), np.zeros((1, 8, 8, 1)),
                            train=False)
  # Non-trivial running statistics: inference-mode BN must use them.
  variables = jax.tree.map(
      lambda x: x + 0.1 * rng.uniform(size=x.shape).astype(np.float32),
      variables)
  results = {}
  for name, devices in (('one', jax.devices()[:1]), ('all', jax.devices())):
    mesh = sharding.make_mesh(devices)
    results[name] = features.extract_features(
        backbone, variables, _batches(images, labels, 16, mesh), mesh, spec,
        return_index=True)
  assert len(jax.devices()) == 8
  for feats, labs, index in results.values():
    assert feats.shape == (37, 8)
    np.testing.assert_array_equal(np.sort(index), np.arange(37))
    np.testing.assert_array_equal(labs, labels[index])
  np.testing.assert_allclose(results['one'][0], results['all'][0], rtol=1e-5,
                             atol=1e-5)
  # And equal to a plain, unsharded forward pass on NumPy-normalised images.
  normalised = (images / 255.0 - 0.2860) / 0.3530
  direct = backbone.apply(variables, normalised.astype(np.float32),
                          train=False)
  np.testing.assert_allclose(results['all'][0], direct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('source_channels,channels', [(1, 1), (1, 3), (3, 1),
                                                      (3, 3)])
def test_pixel_features_are_the_crops_normalised_as_numpy(source_channels,
                                                          channels):
  # RGB means and stds of a grey output become their luma (settings).
  spec = _spec('cifar10', channels=channels)
  means, stds = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
  if channels == 1:
    means, stds = [LUMA @ means], [LUMA @ stds]
  images = np.random.default_rng(source_channels).integers(
      0, 256, (5, 4, 4, source_channels), np.uint8)
  pixels = images / 255.0
  if source_channels != channels:  # Grey replicated, RGB to luma.
    pixels = (np.repeat(pixels, 3, -1) if channels == 3 else
              (pixels @ LUMA)[..., None])
  expected = ((pixels - np.asarray(means)) / np.asarray(stds)).reshape(5, -1)
  mesh = sharding.make_mesh()
  feats, labels = features.extract_features(
      features.PixelFeatures(), {},
      _batches(images, np.arange(5), 8, mesh), mesh, spec)
  np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(labels, np.arange(5))
