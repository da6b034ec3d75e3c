"""The ResNet options: last-BN scale, convolution kernels, the stride-2 stem."""

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


def test_stride2_stem_halves_the_resolution_of_every_stage():
  net = ResNet(stage_sizes=(1, 1, 1), block_cls=BasicBlock, width=1 / 16,
               stem='cifar_stride2')
  x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype(np.float32)
  variables = net.init(jax.random.key(0), x, train=False)
  features, state = net.apply(variables, x, train=False,
                              capture_intermediates=True)
  inter = state['intermediates']
  stem = inter['conv_init']['__call__'][0]
  assert stem.shape == (2, 14, 14, 4)
  # PyTorch's padding of a 3x3 stride-2 convolution of 28 px: one row and
  # column of zeros on each side, windows centred on even pixels.
  kernel = np.asarray(variables['params']['conv_init']['kernel'])[..., 0, :]
  padded = np.pad(x[..., 0], ((0, 0), (1, 1), (1, 1)))
  windows = np.stack([padded[:, a:a + 27:2, b:b + 27:2]
                      for a in range(3) for b in range(3)], -1)
  np.testing.assert_allclose(stem, windows @ kernel.reshape(9, 4), rtol=1e-5,
                             atol=1e-5)
  # XLA's SAME, the runs saved before: one row and column after the image.
  same = net.clone(padding='same').apply(variables, x, train=False,
                                         capture_intermediates=True)[1]
  padded = np.pad(x[..., 0], ((0, 0), (0, 1), (0, 1)))
  windows = np.stack([padded[:, a:a + 27:2, b:b + 27:2]
                      for a in range(3) for b in range(3)], -1)
  np.testing.assert_allclose(
      same['intermediates']['conv_init']['__call__'][0],
      windows @ kernel.reshape(9, 4), rtol=1e-5, atol=1e-5)
  # Stages at 14, 7 and 4 px (the CIFAR stem would give 28, 14, 7).
  sides = [inter[f'BasicBlock_{k}']['__call__'][0].shape[1] for k in range(3)]
  assert sides == [14, 7, 4]
  assert features.shape == (2, net.num_features) == (2, 16)
