"""The ResNet initialisation switches: last-BN scale and convolution kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smog_jax.models.resnet import BasicBlock, ResNet


def _params(**kwargs):
  net = ResNet(stage_sizes=(1, 1), block_cls=BasicBlock,
                      width=1 / 16, stem='cifar', **kwargs)
  return net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)),
                  train=False)['params']


def _last_bn_scales(params):
  # BasicBlock's BatchNorms in call order: BatchNorm_0, BatchNorm_1 (last),
  # then norm_proj on the projection shortcut.
  return [params[name]['BatchNorm_1']['scale']
          for name in ('BasicBlock_0', 'BasicBlock_1')]


@pytest.mark.parametrize('zero,expected', [(True, 0.0), (False, 1.0)])
def test_zero_init_residual_sets_the_last_bn_scale(zero, expected):
  params = _params(zero_init_residual=zero)
  for scale in _last_bn_scales(params):
    np.testing.assert_array_equal(scale, np.full(scale.shape, expected))
  # The other BN scales start at one either way.
  np.testing.assert_array_equal(params['BasicBlock_0']['BatchNorm_0']['scale'],
                                1.0)


def test_torch_default_kernels_are_uniform_within_one_over_root_fan_in():
  kernel = _params(kernel_init='torch_default')['BasicBlock_1']['Conv_0'][
      'kernel']
  fan_in = np.prod(kernel.shape[:-1])  # 3 x 3 x 4 input channels.
  bound = 1 / np.sqrt(fan_in)
  assert np.abs(kernel).max() <= bound
  # A uniform law fills its range: the extreme draws come near the bound.
  assert np.abs(kernel).max() > 0.9 * bound


def test_he_fan_out_kernels_have_variance_two_over_fan_out():
  kernel = _params(kernel_init='he_fan_out_normal')['BasicBlock_1']['Conv_0'][
      'kernel']
  fan_out = np.prod(kernel.shape[:2]) * kernel.shape[-1]  # 3 x 3 x 8.
  # 288 draws of a truncated normal: the sample variance within 25 %.
  assert abs(np.var(kernel) / (2 / fan_out) - 1) < 0.25


def test_unknown_kernel_init_is_a_clear_error():
  with pytest.raises(ValueError, match='Unknown kernel_init'):
    _params(kernel_init='xavier')
