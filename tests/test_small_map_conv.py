"""ResNet convolutions onto maps of at most 2x2 as one matmul."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smog_jax.models.resnet import (SMALL_MAP_POSITIONS, BasicBlock, ResNet,
                                    small_map_conv)

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _lax_conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=_NHWC)


def _small_map_conv(x, kernel, strides, padding):
  dims = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _NHWC)
  return small_map_conv(x, kernel, strides, padding,
                               dimension_numbers=dims)


@pytest.mark.parametrize('side,kernel_side,strides,padding', [
    (2, 3, 1, 'SAME'),            # A 2x2 stage's 3x3 convolutions.
    (4, 3, 2, 'SAME'),            # Its strided entry from 4x4 (pads 0 / 1).
    (3, 3, 2, 'SAME'),            # Odd side: pads 1 / 1.
    (1, 3, 1, 'SAME'),            # 1x1 maps: only the centre tap reads.
    (5, 3, 2, [(0, 0), (0, 0)]),  # Explicit VALID-like pads, 5 -> 2.
    (4, 2, 2, [(1, 0), (0, 1)]),  # Even kernel, asymmetric pads.
])
def test_small_maps_match_the_convolution_and_its_gradients(
    side, kernel_side, strides, padding):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (3, side, side, 5))
  kernel = jax.random.normal(kk, (kernel_side, kernel_side, 5, 7))
  args = (x, kernel, (strides, strides), padding)
  want = _lax_conv(*args)
  assert want.shape[1] * want.shape[2] <= SMALL_MAP_POSITIONS
  np.testing.assert_allclose(_small_map_conv(*args), want, rtol=1e-5,
                             atol=1e-5)
  cotangent = jax.random.normal(kg, want.shape)
  grads = [jax.vjp(lambda a, b, f=f: f(a, b, *args[2:]), x, kernel)[1](
      cotangent) for f in (_small_map_conv, _lax_conv)]
  for got, expected in zip(*grads):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_operator_entries_are_kernel_entries_or_zero():
  # The exactness argument: no entry sums two taps, so bfloat16 is exact.
  kernel = jnp.arange(1.0, 10.0).reshape(3, 3, 1, 1)
  x = jnp.eye(16).reshape(16, 4, 4, 1)  # Row i: a one-hot pixel.
  operator = _small_map_conv(x, kernel, (2, 2), 'SAME').reshape(16, 4)
  assert set(np.unique(operator)) <= set(range(10))
  # 4x4 -> 2x2 with pads (0, 1): output (0, 0) reads rows/cols 0-2 of the
  # input with taps (ky, kx) = (y, x); output (1, 1) reads rows/cols 2-3.
  np.testing.assert_array_equal(operator[:, 0].reshape(4, 4)[:3, :3],
                                kernel[..., 0, 0])
  np.testing.assert_array_equal(operator[:, 3].reshape(4, 4)[2:, 2:],
                                kernel[:2, :2, 0, 0])


@pytest.mark.parametrize('x_shape,kernel_shape,strides,padding', [
    ((2, 4, 4, 3), (3, 3, 3, 4), 1, 'SAME'),
    ((2, 4, 4, 3), (1, 1, 3, 4), 2, 'SAME'),
    # The ImageNet stem: no operator of 224 x 224 x 112 x 112 taps is built.
    ((2, 224, 224, 3), (7, 7, 3, 64), 2, ((3, 3), (3, 3))),
])
def test_larger_maps_and_1x1_kernels_are_the_plain_convolution(
    x_shape, kernel_shape, strides, padding):
  jaxpr = jax.make_jaxpr(_small_map_conv, static_argnums=(2, 3))(
      jax.ShapeDtypeStruct(x_shape, jnp.float32),
      jax.ShapeDtypeStruct(kernel_shape, jnp.float32), (strides, strides),
      padding)
  assert 'conv_general_dilated' in str(jaxpr)
  assert 'dot_general' not in str(jaxpr)


def test_resnet_with_a_2x2_stage_is_the_same_network_either_way():
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 28, 28, 1))
  nets = [ResNet(stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock,
                 width=1 / 16, stem='cifar_stride2', matmul_small_maps=m)
          for m in (True, False)]
  variables = nets[1].init(jax.random.PRNGKey(0), x, train=False)
  assert jax.tree.structure(variables) == jax.tree.structure(
      nets[0].init(jax.random.PRNGKey(0), x, train=False))
  jaxpr = jax.make_jaxpr(lambda v: nets[0].apply(v, x, train=False))
  assert 'dot_general' in str(jaxpr(variables))
  outs = [net.apply(variables, x, train=True, mutable=['batch_stats'])
          for net in nets]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-5), *outs)
