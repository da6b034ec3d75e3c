"""Feature extraction: every example once, independent of the device count."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smog_jax import sharding
from smog_jax.evaluation import features


class TinyCNN(nn.Module):
  """Conv-BN-ReLU-pool: BN statistics matter and it compiles fast (a ResNet
  adds nothing to what is tested here: batching, masks, sharding)."""

  @nn.compact
  def __call__(self, x, train=True):
    x = nn.Conv(8, (3, 3), (2, 2), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return jnp.mean(x, axis=(1, 2))


def _batches(images, labels, batch_size, mesh):
  return features.array_batches(dict(image=images, label=labels),
                                np.arange(len(labels)), batch_size, mesh)


def test_every_example_once_and_mesh_independent():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(37, 8, 8, 1)).astype(np.float32)  # 37 % 16 != 0.
  labels = rng.integers(0, 10, 37)
  backbone = TinyCNN()
  variables = backbone.init(jax.random.key(0), images[:1], train=False)
  # Non-trivial running statistics: inference-mode BN must use them.
  variables = jax.tree.map(
      lambda x: x + 0.1 * rng.uniform(size=x.shape).astype(np.float32),
      variables)
  results = {}
  for name, devices in (('one', jax.devices()[:1]), ('all', jax.devices())):
    mesh = sharding.make_mesh(devices)
    results[name] = features.extract_features(
        backbone, variables,
        _batches(images, labels, 16, mesh),
        mesh, return_index=True)
  assert len(jax.devices()) == 8
  for feats, labs, index in results.values():
    assert feats.shape == (37, 8)
    np.testing.assert_array_equal(np.sort(index), np.arange(37))
    np.testing.assert_array_equal(labs, labels[index])
  np.testing.assert_allclose(results['one'][0], results['all'][0], rtol=1e-5,
                             atol=1e-5)
  # And equal to a plain, unsharded forward pass.
  direct = backbone.apply(variables, images, train=False)
  np.testing.assert_allclose(results['all'][0], direct, rtol=1e-5, atol=1e-5)


def test_pixel_features_are_flattened_images():
  images = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
  mesh = sharding.make_mesh()
  feats, labels = features.extract_features(
      features.PixelFeatures(), {},
      _batches(images, np.array([3, 4]), 8, mesh), mesh)
  np.testing.assert_array_equal(feats, images.reshape(2, -1))
  np.testing.assert_array_equal(labels, [3, 4])
