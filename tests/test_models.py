"""Transformer backbones: sizes, 224 / 96 px inputs, windows, drop path."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import step_fixtures as fx
from smog_jax import models, optim, schedules, train, train_state
from smog_jax.models import swin, transformer


def _model_config(backbone, **fields):
  cfg = dict(backbone=backbone, dtype='float32', remat=False,
             drop_path_rate=0.0, pooling='cls', base_image_size=224,
             projector_hidden_dim=16, predictor_hidden_dim=16,
             projection_dim=fx.DIM, head_activation='gelu',
             head_gelu_approximate=False, bn_momentum=0.9, width=1.0,
             stem='imagenet', zero_init_residual=False,
             kernel_init='he_fan_out_normal', matmul_small_maps=True,
             padding='symmetric', backbone_bn='per_resolution',
             layer_norm_epsilon=1e-6)
  cfg.update(fields)
  return ml_collections.ConfigDict(cfg)


def _abstract_init(module, size):
  return jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))


# Published sizes minus the 1000-class head (weights + biases):
# torchvision resnet50 25,557,032 - 2,049,000; timm vit_small_patch16_224
# 22,050,664 - 385,000; timm vit_base_patch16_224 86,567,656 - 769,000;
# timm swin_tiny_patch4_window7_224 28,288,354 - 769,000.
@pytest.mark.parametrize('backbone,want', [
    ('resnet50', 23_508_032), ('vit_s16', 21_665_664),
    ('vit_b16', 85_798_656), ('swin_t', 27_519_354)])
def test_parameter_count_is_the_published_backbone_size(backbone, want):
  cfg = _model_config(backbone)
  module = models.build_backbone(cfg)
  params = _abstract_init(module, 224)['params']
  assert sum(x.size for x in jax.tree.leaves(params)) == want


@pytest.mark.parametrize('backbone,dim', [
    ('vit_s16', 384), ('vit_b16', 768), ('swin_t', 768)])
@pytest.mark.parametrize('size', [224, 96])
def test_full_size_backbones_take_224_and_96_px(backbone, dim, size):
  module = models.build_backbone(_model_config(backbone))
  variables = _abstract_init(module, 224)
  out = jax.eval_shape(
      lambda v, x: module.apply(v, x, train=True), variables,
      jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  assert out.shape == (2, dim) and out.dtype == jnp.float32


def _tiny_swin(**kw):
  # Swin-T's geometry (patch 4, window 7, four stages) at a tiny width.
  return swin.SwinTransformer(embed_dim=8, depths=(2, 2, 2, 2),
                              num_heads=(1, 1, 2, 2), **kw)


def test_swin_forward_at_224_and_96_px():
  module = _tiny_swin()
  key = jax.random.PRNGKey(1)
  variables = jax.jit(functools.partial(module.init, train=False))(
      jax.random.PRNGKey(0), jnp.zeros((1, 96, 96, 3)))
  apply = jax.jit(module.apply)
  # One set of parameters for both sizes (no size-dependent table).
  out = apply(variables, jax.random.normal(key, (1, 224, 224, 3)))
  assert out.shape == (1, 64) and np.all(np.isfinite(out))
  images = jax.random.normal(key, (2, 96, 96, 3))
  out = apply(variables, images)
  assert out.shape == (2, 64) and np.all(np.isfinite(out))
  # Examples are independent: the second image alone gives its own features.
  np.testing.assert_allclose(apply(variables, images[1:]), out[1:],
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('size,want', [
    # Stage maps 56, 28, 14, 7 at 224 px; 24, 12, 6, 3 at 96 px.
    (224, [(7, 3), (7, 3), (7, 3), (7, 0)]),
    (96, [(7, 3), (7, 3), (6, 0), (3, 0)])])
def test_swin_windows_per_stage(size, want):
  maps = [size // 4 // 2**i for i in range(4)]
  assert [swin.stage_window(m, m, 7, 3) for m in maps] == want


def test_relative_position_index_hand_computed():
  # A 2 x 2 window indexing the 13 x 13 table of a 7 x 7 window: offset
  # (dy, dx) is row (dy + 6) * 13 + dx + 6; tokens (0,0) (0,1) (1,0) (1,1).
  got = swin.relative_position_index(2, 7)
  centre = 6 * 13 + 6
  want = centre + np.array([[0, -1, -13, -14], [1, 0, -12, -13],
                            [13, 12, 0, -1], [14, 13, 1, 0]])
  np.testing.assert_array_equal(got, want)
  # The full window uses every row of its table once per offset.
  assert set(swin.relative_position_index(7, 7).ravel()) == set(range(169))


def _np_shifted_window_mask(size, window, shift):
  """The Swin paper's mask: 3 x 3 regions of the shifted map, per window."""
  regions = np.zeros((size, size), int)
  cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
  for i, rows in enumerate(cuts):
    for j, cols in enumerate(cuts):
      regions[rows, cols] = 3 * i + j
  n = size // window
  w = regions.reshape(n, window, n, window).transpose(0, 2, 1, 3).reshape(
      n * n, -1)
  return w[:, :, None] == w[:, None, :]


@pytest.mark.parametrize('size,window,shift', [(14, 7, 3), (8, 4, 2)])
def test_shifted_window_mask_is_the_papers(size, window, shift):
  got = swin.attention_mask(size, size, window, shift)[:, 0]
  np.testing.assert_array_equal(got, _np_shifted_window_mask(size, window,
                                                             shift))


@pytest.mark.parametrize('shift', [0, 3])
def test_padded_windows_never_attend_to_padding(shift):
  # The 24 x 24 map of a 96 px crop, padded to 28 x 28 for 7 x 7 windows.
  labels = swin.partition(
      swin.window_labels(24, 24, 7, shift)[None, ..., None], 7)[0, ..., 0]
  real = np.roll(np.pad(np.ones((24, 24), bool), ((0, 4), (0, 4))),
                 (-shift, -shift), axis=(0, 1))
  real = swin.partition(real[None, ..., None], 7)[0, ..., 0]
  mask = swin.attention_mask(24, 24, 7, shift)[:, 0]
  assert not np.any(mask & real[:, :, None] & ~real[:, None, :])
  assert np.all(np.diagonal(mask, axis1=1, axis2=2))
  if shift == 0:  # unshifted: all real tokens of a window see each other.
    both = real[:, :, None] & real[:, None, :]
    np.testing.assert_array_equal(mask & both, both)
  assert labels.shape == (16, 49)


def test_drop_path_drops_whole_examples_and_needs_an_rng():
  layer = transformer.DropPath(0.5)
  x = jnp.ones((64, 3, 5))
  assert np.all(layer.apply({}, x) == x)  # no rng: the identity
  y = np.asarray(layer.apply({}, x, rngs={'dropout': jax.random.PRNGKey(0)}))
  per_example = y.reshape(64, -1)
  assert set(np.unique(per_example)) == {0.0, 2.0}
  assert np.all(per_example.min(axis=1) == per_example.max(axis=1))
  assert 16 < np.sum(per_example[:, 0] == 0) < 48


def test_vit_position_table_is_resized_to_the_grid():
  # Class token + 4 x 4 table learned at 16 px with 4 px patches; a 8 px
  # image has a 2 x 2 grid.
  vit = models.VisionTransformer(patch_size=4, embed_dim=8, depth=1,
                                 num_heads=2, base_image_size=16)
  variables = vit.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)),
                       train=False)
  assert variables['params']['position_embedding'].shape == (17, 8)
  out = vit.apply(variables, jnp.ones((2, 8, 8, 3)))
  assert out.shape == (2, 8) and np.all(np.isfinite(out))


TINY_BACKBONES = {
    'vit': dict(patch_size=2, embed_dim=8, depth=2, num_heads=2,
                base_image_size=fx.LARGE),
    # 4 x 4 map, 3 x 3 windows: padded to 6 x 6, shifted by 1.
    'swin': dict(patch_size=2, embed_dim=8, depths=(2, 2), num_heads=(1, 2),
                 window=3),
}


def _tiny_setup(backbone, dtype='float32', drop_path_rate=0.0):
  cfg = fx.tiny_config()
  cfg.model = _model_config(backbone, dtype=dtype,
                            drop_path_rate=drop_path_rate,
                            **TINY_BACKBONES[backbone])
  cfg.optimizer = ml_collections.ConfigDict(dict(
      name='adamw', start_lr=1e-3, peak_lr=1e-3, end_lr=1e-3,
      warmup_epochs=0, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8,
      exclude_1d_from_decay=True, grad_clip_norm=3.0))
  network = models.build_network(cfg.model)
  sched = schedules.from_config(cfg, fx.TOTAL_STEPS, steps_per_epoch=5)
  tx = optim.make_optimizer(cfg.optimizer, sched.learning_rate)
  step_config = train.StepConfig(schedules=sched, augment=fx.IDENTITY,
                                 temperature=0.1)
  state = jax.jit(lambda key: train_state.create_train_state(
      key, network, tx, (fx.LARGE, fx.LARGE, fx.CHANNELS), fx.NUM_HEADS,
      fx.NUM_GROUPS))(jax.random.PRNGKey(0))
  return network, tx, step_config, state


@pytest.mark.parametrize('backbone', ['vit', 'swin'])
def test_one_train_step(backbone):
  network, tx, step_config, state = _tiny_setup(backbone, drop_path_rate=0.2)
  step = jax.jit(functools.partial(train.train_step, network=network, tx=tx,
                                   config=step_config))
  b = jax.tree.map(jnp.asarray, fx.batch())
  new, metrics = step(state, b)
  assert np.isfinite(metrics['loss']) and metrics['grad_norm'] > 0
  moved = jax.tree.map(lambda a, c: bool(jnp.any(a != c)),
                       state.params['backbone'], new.params['backbone'])
  assert all(jax.tree.leaves(moved))


def test_target_network_runs_without_drop_path():
  network, tx, step_config, state = _tiny_setup('vit', drop_path_rate=0.5)
  b = jax.tree.map(jnp.asarray, fx.batch(seed=3))
  step = functools.partial(train.train_step, network=network, tx=tx,
                           config=step_config)
  new, metrics = jax.jit(step)(state, b)
  # The target's BN statistics are those of a forward pass without drop path.
  # (The tiny config's augmentation is the identity: the views are pixels.)
  target = fx.pixels(np.asarray(b['target_large']))
  images = target.reshape((-1,) + target.shape[2:])
  _, want = jax.jit(functools.partial(
      network.apply, train=True, with_predictor=False,
      mutable=['batch_stats']))(
          {'params': state.target_params,
           'batch_stats': state.target_batch_stats}, images)
  # Measured: 1e-5 apart; a drop-path forward differs by > 3e-3.
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-4),
               new.target_batch_stats, want['batch_stats'])
  # The online network does drop paths: the loss depends on the step's rng.
  _, other = jax.jit(step)(state.replace(rng=jax.random.PRNGKey(9)), b)
  assert abs(float(other['loss']) - float(metrics['loss'])) > 1e-4


def test_remat_keeps_parameters_and_gradients():
  # Same parameter names (a checkpoint loads either way) and gradients.
  cfg = fx.tiny_config().model
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
  grads = []
  for remat in (False, True):
    cfg.remat = remat
    module = models.build_backbone(cfg)
    variables = jax.jit(functools.partial(module.init, train=False))(
        jax.random.PRNGKey(0), x)
    loss = lambda p, v=variables, m=module: jnp.sum(m.apply(
        dict(v, params=p), x, mutable=['batch_stats'])[0] ** 2)
    grads.append(jax.jit(jax.grad(loss))(variables['params']))
  assert jax.tree.structure(grads[0]) == jax.tree.structure(grads[1])
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                 atol=1e-6), grads[0], grads[1])


def test_bfloat16_step_agrees_with_float32():
  # bf16 compute, float32 parameters, BN statistics and SMoG math: one step
  # from the same state and batch. Measured: loss 2e-3 and centroids 1.5e-3
  # apart, while the step moves the centroids by 7e-2.
  results = {}
  for dtype in ('float32', 'bfloat16'):
    cfg = fx.tiny_config()
    cfg.model.dtype = dtype
    network, tx, step_config, state = fx.build(cfg)
    step = jax.jit(functools.partial(train.train_step, network=network, tx=tx,
                                     config=step_config))
    new, metrics = step(state, jax.tree.map(jnp.asarray, fx.batch()))
    floats = [x.dtype for x in jax.tree.leaves(
        (new.params, new.batch_stats, new.target_params, new.opt_state,
         new.centroids)) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert set(floats) == {np.dtype('float32')}
    results[dtype] = (float(metrics['loss']), np.asarray(new.centroids))
  (loss32, c32), (loss16, c16) = results['float32'], results['bfloat16']
  assert loss16 != loss32  # bf16 really computed
  np.testing.assert_allclose(loss16, loss32, rtol=1e-2)
  np.testing.assert_allclose(c16, c32, atol=1e-2)
  moved = np.abs(c32 - np.asarray(state.centroids)).max()
  assert moved > 3e-2


def test_gelu_heads_are_the_exact_gelu():
  cfg = _model_config('swin', **TINY_BACKBONES['swin'])
  got, re_derived = fx.predictor_output(cfg)
  np.testing.assert_allclose(got, re_derived(fx.gelu_exact), atol=1e-5)
  # The tanh approximation is measurably different on these inputs.
  assert np.abs(got - re_derived(fx.gelu_tanh)).max() > 1e-4


def test_backbone_mlps_are_the_exact_gelu():
  x = np.linspace(-4.0, 4.0, 33, dtype=np.float32).reshape(1, 33)
  identity = dict(kernel=np.eye(33, dtype=np.float32),
                  bias=np.zeros(33, np.float32))
  mlp = transformer.MLP(ratio=1.0, dtype=jnp.float32)
  got = mlp.apply({'params': dict(Dense_0=identity, Dense_1=identity)}, x)
  np.testing.assert_allclose(got, fx.gelu_exact(x), atol=1e-6)
  assert np.abs(got - fx.gelu_tanh(x)).max() > 1e-4
