"""Backbone export and loading into a downstream Flax model."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from smog_jax import export
from smog_jax.evaluation import fakes

IMAGE_SIZE = 8


fakes.register_tiny_backbone()  # Compiles in well under a second.


def tiny_model_config():
  return ml_collections.ConfigDict(dict(
      backbone=fakes.TINY_BACKBONE, width=8, stem='cifar', dtype='float32',
      bn_momentum=0.9, projector_hidden_dim=16, predictor_hidden_dim=16,
      projection_dim=8, head_activation='relu'))


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('pretrain'))
  config = fakes.fake_pretraining_config(tiny_model_config(), IMAGE_SIZE)
  state = fakes.write_fake_pretraining_workdir(workdir, config, step=7)
  return workdir, state


def _images(n=6, seed=0):
  return np.random.default_rng(seed).normal(
      size=(n, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)


def _original_features(state, images):
  module = export.models.build_backbone(tiny_model_config())
  variables = {'params': state.params['backbone'],
               'batch_stats': state.batch_stats['backbone']}
  return module.apply(variables, images, train=False)


def test_load_from_workdir_is_the_online_backbone(pretrained):
  workdir, state = pretrained
  module, variables = export.load_backbone(workdir)
  np.testing.assert_allclose(
      module.apply(variables, _images(), train=False),
      _original_features(state, _images()), rtol=1e-6, atol=1e-6)


def test_export_round_trip(pretrained, tmp_path):
  workdir, state = pretrained
  out = export.export_backbone(workdir, str(tmp_path / 'exported'))
  with open(os.path.join(out, export.DESCRIPTION_FILE)) as f:
    desc = json.load(f)
  assert desc['step'] == 7
  assert desc['model']['backbone'] == fakes.TINY_BACKBONE
  assert desc['preprocessing']['image_size'] == IMAGE_SIZE
  assert desc['preprocessing']['channels'] == 1
  assert len(desc['preprocessing']['mean']) == 1
  info = export.load_backbone_info(out)
  assert info.step == 7 and info.source == 'export'
  original = {'params': state.params['backbone'],
              'batch_stats': state.batch_stats['backbone']}
  jax.tree.map(np.testing.assert_array_equal, info.variables, original)
  np.testing.assert_allclose(
      info.module.apply(info.variables, _images(), train=False),
      _original_features(state, _images()), rtol=1e-6, atol=1e-6)
  with pytest.raises(FileExistsError):
    export.export_backbone(workdir, out)


class Classifier(nn.Module):
  """A user's model: the pre-trained backbone + a new linear head."""
  backbone: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, images, train: bool = False):
    return nn.Dense(self.num_classes)(self.backbone(images, train=False))


def test_downstream_classifier_trains_one_step(pretrained, tmp_path):
  workdir, _ = pretrained
  out = export.export_backbone(workdir, str(tmp_path / 'exported'))
  backbone, loaded = export.load_backbone(out)
  model = Classifier(backbone, num_classes=3)
  images, labels = _images(4), jnp.array([0, 1, 2, 1])
  variables = model.init(jax.random.key(1), images)
  # Graft the pre-trained weights under the backbone's name.
  params = dict(variables['params'], backbone=loaded['params'])
  batch_stats = {'backbone': loaded['batch_stats']}
  tx = optax.sgd(0.1, momentum=0.9)
  opt_state = tx.init(params)

  def loss_fn(p):
    logits = model.apply({'params': p, 'batch_stats': batch_stats}, images)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  assert np.isfinite(float(loss))
  assert not np.allclose(new_params['Dense_0']['kernel'],
                         params['Dense_0']['kernel'])
  changed = jax.tree.leaves(jax.tree.map(
      lambda a, b: not np.allclose(a, b), new_params['backbone'],
      params['backbone']))
  assert any(changed)  # Fine-tuning reaches the backbone too.
  assert np.isfinite(float(loss_fn(new_params)))
