"""The pre-trained backbone as a Flax NNX module, fine-tuned downstream."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import test_export
from smog_jax import export
from smog_jax import models

IMAGE_SIZE = test_export.IMAGE_SIZE  # The `:tiny` config's.
HEAD_ONLY = nnx.All(nnx.Param, nnx.PathContains('head'))
NUM_CLASSES = 3


def _images(n=8):
  return test_export.grey_images(n)


def _labels(n=8):
  return jnp.arange(n) % NUM_CLASSES


def _linen(model_config, state):
  module = models.build_backbone(model_config)
  variables = {'params': state.params['backbone'],
               'batch_stats': state.batch_stats['backbone']}
  return module, variables


def _host(model, variable_filter):
  return jax.tree.map(np.array, nnx.to_pure_dict(
      nnx.state(model, variable_filter)))


def _any_changed(before, after):
  return any(jax.tree.leaves(jax.tree.map(
      lambda a, b: not np.array_equal(a, b), before, after)))


class Classifier(nnx.Module):
  """A user's model: the pre-trained backbone + a new linear head."""

  def __init__(self, backbone: export.NNXBackbone, num_classes: int,
               rngs: nnx.Rngs):
    self.backbone = backbone
    self.head = nnx.Linear(backbone.num_features, num_classes, rngs=rngs)

  def __call__(self, images):
    return self.head(self.backbone(images))


def _fine_tune(model, optimizer, images, labels, steps=5):
  """Losses of `steps` SGD steps on one batch, the NNX way."""

  @nnx.jit
  def train_step(model, optimizer, images, labels):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(
          model(images), labels).mean()
    loss, grads = nnx.value_and_grad(
        loss_fn, argnums=nnx.DiffState(0, optimizer.wrt))(model)
    optimizer.update(model, grads)
    return loss

  return [float(train_step(model, optimizer, images, labels))
          for _ in range(steps)]


def test_features_equal_linen_for_workdir_and_export(pretrain, tmp_path):
  workdir, config, state = pretrain
  model_config = config.model
  module, variables = _linen(model_config, state)
  images = _images()
  want = module.apply(variables, images, train=False)
  exported = export.export_backbone(workdir, str(tmp_path / 'exported'))
  for path in (workdir, exported):
    backbone = export.load_nnx_backbone(path)
    assert backbone.num_features == want.shape[-1]
    # Eval mode when loaded, after `eval()`, and forced for one call.
    np.testing.assert_allclose(backbone(images), want, rtol=1e-6, atol=1e-6)
    backbone.train()
    np.testing.assert_allclose(backbone(images, train=False), want,
                               rtol=1e-6, atol=1e-6)
    backbone.eval()
    np.testing.assert_allclose(backbone(images), want, rtol=1e-6, atol=1e-6)
    # The weights are Params, the BN running statistics BatchStats.
    jax.tree.map(np.testing.assert_array_equal,
                 nnx.to_pure_dict(nnx.state(backbone, nnx.BatchStat))['linen'],
                 variables['batch_stats'])
    assert (len(jax.tree.leaves(nnx.state(backbone, nnx.Param))) ==
            len(jax.tree.leaves(variables['params'])))


def test_train_mode_is_linen_train_with_batch_stats_updated(pretrain):
  workdir, config, state = pretrain
  model_config = config.model
  module, variables = _linen(model_config, state)
  images = _images()
  want, updated = module.apply(variables, images, train=True,
                               mutable=['batch_stats'])
  backbone = export.load_nnx_backbone(workdir)
  backbone.train()
  np.testing.assert_allclose(backbone(images), want, rtol=1e-5, atol=1e-5)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      _host(backbone, nnx.BatchStat)['linen'], updated['batch_stats'])
  # nnx.view gives an eval-mode view of the same (now updated) variables.
  in_eval = nnx.view(backbone, use_running_average=True, deterministic=True)
  np.testing.assert_allclose(
      in_eval(images),
      module.apply({'params': variables['params'], **updated}, images,
                   train=False), rtol=1e-5, atol=1e-5)


def test_fine_tuning_trains_backbone_and_batch_stats(pretrain):
  workdir, _, _ = pretrain
  model = Classifier(export.load_nnx_backbone(workdir), NUM_CLASSES,
                     nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  weights, stats = _host(model, nnx.Param), _host(model, nnx.BatchStat)
  model.train()
  losses = _fine_tune(model, optimizer, _images(), _labels())
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  assert _any_changed(weights['head'], _host(model, nnx.Param)['head'])
  assert _any_changed(weights['backbone'], _host(model, nnx.Param)['backbone'])
  assert _any_changed(stats, _host(model, nnx.BatchStat))
  model.eval()
  assert model(_images()).shape == (8, NUM_CLASSES)


def test_frozen_backbone_keeps_weights_and_batch_stats(pretrain):
  workdir, _, _ = pretrain
  model = Classifier(export.load_nnx_backbone(workdir), NUM_CLASSES,
                     nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.01), wrt=HEAD_ONLY)
  weights, stats = _host(model, nnx.Param), _host(model, nnx.BatchStat)
  model.train()
  model.backbone.eval()  # BN on its running statistics, never updated.
  losses = _fine_tune(model, optimizer, _images(), _labels())
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  assert _any_changed(weights['head'], _host(model, nnx.Param)['head'])
  jax.tree.map(np.testing.assert_array_equal, weights['backbone'],
               _host(model, nnx.Param)['backbone'])
  jax.tree.map(np.testing.assert_array_equal, stats,
               _host(model, nnx.BatchStat))


def _tiny_vit():
  vit = models.VisionTransformer(patch_size=7, embed_dim=8, depth=2,
                                 num_heads=2, base_image_size=IMAGE_SIZE,
                                 drop_path_rate=0.5)
  init = jax.jit(functools.partial(vit.init, train=False))
  return vit, init(jax.random.key(0), _images(1))


def test_drop_path_only_in_train_mode_with_rngs():
  vit, variables = _tiny_vit()
  images = _images()
  want = jax.jit(functools.partial(vit.apply, train=False))(variables, images)
  image_shape = (IMAGE_SIZE, IMAGE_SIZE, 1)
  with_rngs = export.NNXBackbone(vit, variables, image_shape,
                                 rngs=nnx.Rngs(dropout=1))
  without_rngs = export.NNXBackbone(vit, variables, image_shape)
  np.testing.assert_allclose(with_rngs(images), want, rtol=1e-6, atol=1e-6)
  with_rngs.train()
  dropped = with_rngs(images)
  assert not np.allclose(dropped, want, atol=1e-3)
  assert not np.allclose(with_rngs(images), dropped, atol=1e-3)  # New masks.
  without_rngs.train()
  np.testing.assert_allclose(without_rngs(images), want, rtol=1e-6, atol=1e-6)


def test_variables_that_do_not_fit_are_named():
  vit, variables = _tiny_vit()
  params = dict(variables['params'], extra=np.zeros(2))
  del params['class_token']
  named = r"missing \['class_token'\], unexpected \['extra'\]"
  with pytest.raises(ValueError, match=named):
    export.NNXBackbone(vit, {'params': params}, (IMAGE_SIZE, IMAGE_SIZE, 1))
