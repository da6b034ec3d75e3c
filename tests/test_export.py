"""Backbone export and loading into a downstream Flax model."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from smog_jax import export

IMAGE_SIZE = 28  # The `:tiny` pre-training config's (Fashion-MNIST).


@pytest.fixture(name='pretrained')
def _pretrained(pretrain):
  workdir, config, state = pretrain
  return workdir, config.model, state


def grey_images(n=6, seed=0):
  """`n` random `:tiny`-sized grey images (also used by test_export_nnx)."""
  return np.random.default_rng(seed).normal(
      size=(n, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)


def _original_features(model_config, state, images):
  module = export.models.build_backbone(model_config)
  variables = {'params': state.params['backbone'],
               'batch_stats': state.batch_stats['backbone']}
  return module.apply(variables, images, train=False)


def test_load_from_workdir_is_the_online_backbone(pretrained):
  workdir, model_config, state = pretrained
  module, variables = export.load_backbone(workdir)
  np.testing.assert_allclose(
      module.apply(variables, grey_images(), train=False),
      _original_features(model_config, state, grey_images()), rtol=1e-6,
      atol=1e-6)


def test_export_round_trip(pretrained, tmp_path):
  workdir, model_config, state = pretrained
  out = export.export_backbone(workdir, str(tmp_path / 'exported'))
  with open(os.path.join(out, export.DESCRIPTION_FILE)) as f:
    desc = json.load(f)
  assert desc['step'] == 7
  assert desc['model']['backbone'] == model_config.backbone
  assert desc['preprocessing']['image_size'] == IMAGE_SIZE
  assert desc['preprocessing']['channels'] == 1
  assert len(desc['preprocessing']['mean']) == 1
  info = export.load_backbone_info(out)
  assert info.step == 7 and info.source == 'export'
  original = {'params': state.params['backbone'],
              'batch_stats': state.batch_stats['backbone']}
  jax.tree.map(np.testing.assert_array_equal, info.variables, original)
  np.testing.assert_allclose(
      info.module.apply(info.variables, grey_images(), train=False),
      _original_features(model_config, state, grey_images()), rtol=1e-6,
      atol=1e-6)
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
  workdir, _, _ = pretrained
  out = export.export_backbone(workdir, str(tmp_path / 'exported'))
  backbone, loaded = export.load_backbone(out)
  model = Classifier(backbone, num_classes=3)
  images, labels = grey_images(4), jnp.array([0, 1, 2, 1])
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


# TensorFlow (and clu) look uninstalled, as on an accelerator host: `import`
# fails and `find_spec` (which etils uses to pick a file backend) answers
# None. The benchmarks for such hosts need exactly these modules.
_BLOCK_TENSORFLOW = """
import importlib.abc, sys

class BlockTensorFlow(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0].startswith(('tensorflow', 'clu')):
      raise ImportError(f'{name} is blocked')

sys.meta_path.insert(0, BlockTensorFlow())
sys.modules.update(tensorflow=None, tensorflow_datasets=None)
import numpy as np
import smog_jax.augment, smog_jax.data, smog_jax.grouping, smog_jax.models
import smog_jax.optim, smog_jax.schedules, smog_jax.train
from smog_jax import export
module, variables = export.load_backbone(sys.argv[1])
features = module.apply(variables, np.zeros((2, 28, 28, 1)), train=False)
assert features.shape[0] == 2 and not any(
    m.startswith('tensorflow') and sys.modules[m] for m in sys.modules)
print('ok')
"""


def test_models_step_and_export_import_without_tensorflow(pretrained):
  result = subprocess.run(
      [sys.executable, '-c', _BLOCK_TENSORFLOW, pretrained[0]],
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'), check=False)
  assert result.stdout.strip().endswith('ok'), result.stderr[-3000:]
