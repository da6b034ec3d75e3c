"""A ResNet on several resolutions at once (`config.model.backbone_bn=
'pooled'`): every BatchNorm against NumPy on the pixels of all of them."""

import sys

import jax
import numpy as np
import pytest

import smog_jax.models  # pylint: disable=unused-import

resnet_lib = sys.modules['smog_jax.models.resnet']

# (convolution, the BatchNorm that normalises its output) of a block.
_BLOCK_PAIRS = (('Conv_0', 'BatchNorm_0'), ('Conv_1', 'BatchNorm_1'),
                ('Conv_2', 'BatchNorm_2'), ('conv_proj', 'norm_proj'))


def _net(block):
  stem = 'imagenet' if block is resnet_lib.BottleneckBlock else 'cifar_stride2'
  return resnet_lib.ResNet(stage_sizes=(1, 1), block_cls=block, width=0.125,
                           stem=stem, zero_init_residual=False)


def _images():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(4, 32, 32, 1)).astype(np.float32),
          rng.normal(size=(6, 16, 16, 1)).astype(np.float32))


def _pairs(intermediates, params, stats):
  """(conv outputs per resolution, BN output, BN params, BN statistics)."""
  yield (intermediates['conv_init']['__call__'],
         intermediates['bn_init']['__call__'][0], params['bn_init'],
         stats['bn_init'])
  for block in (k for k in intermediates if '_' in k and 'Block' in k):
    for conv, norm in _BLOCK_PAIRS:
      if conv in intermediates[block]:
        yield (intermediates[block][conv]['__call__'],
               intermediates[block][norm]['__call__'][0],
               params[block][norm], stats[block][norm])


@pytest.mark.parametrize('block', [resnet_lib.BasicBlock,
                                   resnet_lib.BottleneckBlock])
def test_every_batch_norm_pools_the_pixels_of_all_resolutions(block):
  net, images = _net(block), _images()
  variables = net.init(jax.random.key(0), images[0])
  features, new = net.apply(variables, images, capture_intermediates=True,
                            mutable=['batch_stats', 'intermediates'])
  assert [f.shape[0] for f in features] == [4, 6]
  checked = 0
  for convs, normed, affine, running in _pairs(
      new['intermediates'], variables['params'], new['batch_stats']):
    assert [c.shape[0] for c in convs] == [4, 6]
    pixels = np.concatenate([np.asarray(c).reshape(-1, c.shape[-1])
                             for c in convs])
    mean, var = pixels.mean(axis=0), pixels.var(axis=0)
    want = (pixels - mean) / np.sqrt(var + 1e-5) * np.asarray(
        affine['scale']) + np.asarray(affine['bias'])
    np.testing.assert_allclose(normed, want, rtol=1e-4, atol=1e-4)
    # Running statistics from the pooled batch (momentum 0.9, from 0 and 1).
    np.testing.assert_allclose(running['mean'], 0.1 * mean, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(running['var'], 0.9 + 0.1 * var, rtol=1e-4)
    checked += 1
  # The stem's, then 2 (basic) or 3 (bottleneck) a block, and the
  # projection shortcuts: of the second block (basic), of both (bottleneck).
  assert checked == (6 if block is resnet_lib.BasicBlock else 9)


def test_pooling_a_batch_with_itself_changes_nothing():
  # The statistics of (x, x) are those of x: each output is the plain one.
  net, (images, _) = _net(resnet_lib.BasicBlock), _images()
  variables = net.init(jax.random.key(0), images)
  plain, plain_vars = net.apply(variables, images, mutable=['batch_stats'])
  pooled, pooled_vars = net.apply(variables, (images, images),
                                  mutable=['batch_stats'])
  for out in pooled:
    np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               plain_vars, pooled_vars)
