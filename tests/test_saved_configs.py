"""A workdir (or export) written by an earlier version, its config lacking
fields added since, still reports, exports and resumes as the run that wrote
it trained."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

import eval_fixtures
import step_fixtures as fx
from smog_jax import checkpointing, export, models, report
from smog_jax.data import settings as data_settings


FLAT_COLOUR_FIELDS = ('brightness', 'contrast', 'saturation', 'hue',
                      'jitter_prob', 'grayscale_prob', 'blur_prob',
                      'blur_sigma', 'solarize_prob')
ADDED_MODEL_FIELDS = ('remat', 'zero_init_residual', 'kernel_init',
                      'matmul_small_maps', 'padding', 'backbone_bn')


@pytest.fixture(scope='module')
def earlier_workdir(tmp_path_factory):
  """(today's `:tiny` config as configs built then: 28 px crops, zero-
  initialised residual BN, XLA's SAME padding, the backbone's BatchNorm per
  resolution; a workdir whose checkpoint saved it as before
  `data.large_crop_size`, the pipelines' records (flat colour fields, the
  blur and solarize probabilities as (A, B) pairs) and the later ResNet
  fields, and after `data.shuffle_buffer` existed; the saved state)."""
  config = eval_fixtures.use_fixture(
      eval_fixtures.load_config('fashion_mnist', 'tiny'),
      str(tmp_path_factory.mktemp('data')))
  config.data.large_crop_size = config.data.image_size
  config.model.zero_init_residual = True
  config.model.padding = 'same'
  config.model.backbone_bn = 'per_resolution'
  saved = config.to_dict()
  del saved['data']['large_crop_size']
  for name in data_settings.ADDED_VALUES:  # The folder fields.
    del saved['data'][name]
  saved['data']['shuffle_buffer'] = 10_000
  a, b = saved['data'].pop('pipeline_a'), saved['data'].pop('pipeline_b')
  assert a.keys() == b.keys() == set(FLAT_COLOUR_FIELDS)
  for name in FLAT_COLOUR_FIELDS:
    if name in ('blur_prob', 'solarize_prob'):
      saved['data'][name] = [a[name], b[name]]
    else:
      assert a[name] == b[name]
      saved['data'][name] = a[name]
  for name in ADDED_MODEL_FIELDS:
    del saved['model'][name]
  workdir = str(tmp_path_factory.mktemp('earlier'))
  state = eval_fixtures.write_pretraining_workdir(
      workdir, config, memory_bank_rows=64,
      saved_config=ml_collections.ConfigDict(saved))
  return config, workdir, state


def test_its_config_is_read_with_todays_data_fields(earlier_workdir):
  config, workdir, _ = earlier_workdir
  run = report.load_run(workdir)
  data = run.config.data
  assert data.large_crop_size == data.image_size == 28  # What it trained at.
  assert 'shuffle_buffer' not in data
  assert data.pipeline_b.solarize_prob == 0.2  # The B of the saved pair.
  assert data.to_dict() == config.data.to_dict()
  flat = lambda c: checkpointing.flatten(c.to_dict())  # Tuples as JSON's lists.
  assert flat(run.config.model) == flat(config.model)
  assert run.memory_bank.shape == (2, 64, config.model.projection_dim)
  assert export.load_backbone_info(workdir).preprocessing['image_size'] == 28


def test_an_earlier_export_loads(earlier_workdir, tmp_path):
  config, workdir, state = earlier_workdir
  out = export.export_backbone(workdir, str(tmp_path / 'export'))
  description = os.path.join(out, export.DESCRIPTION_FILE)
  with open(description) as f:
    desc = json.load(f)
  for name in ADDED_MODEL_FIELDS:
    del desc['model'][name]
  with open(description, 'w') as f:
    json.dump(desc, f)
  loaded = export.load_backbone_info(out)
  assert (checkpointing.flatten(loaded.model_config.to_dict()) ==
          checkpointing.flatten(config.model.to_dict()))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b),
               loaded.variables['params'], state.params['backbone'])


def test_it_resumes_unless_the_crops_changed(earlier_workdir):
  config, workdir, state = earlier_workdir
  config = config.copy_and_resolve_references()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      state)
  with checkpointing.make_manager(workdir, async_save=False) as manager:
    restored = checkpointing.restore_latest(manager, abstract, config)
    assert int(restored.step) == int(state.step)
    config.data.large_crop_size = 24
    with pytest.raises(checkpointing.CheckpointError,
                       match=r'data\.large_crop_size: 28 -> 24'):
      checkpointing.restore_latest(manager, abstract, config)


def test_an_earlier_vit_keeps_its_layer_norm_epsilon():
  saved = ml_collections.ConfigDict(dict(
      backbone='vit', patch_size=4, embed_dim=8, depth=1, num_heads=2,
      pooling='cls', base_image_size=8, drop_path_rate=0.0, remat=False,
      dtype='float32'))
  models.upgrade_saved(saved)
  assert saved.layer_norm_epsilon == 1e-5  # What it trained with.
  assert models.build_backbone(saved).layer_norm_epsilon == 1e-5


def test_earlier_gelu_heads_keep_the_tanh_approximation():
  saved = ml_collections.ConfigDict(dict(
      backbone='swin', patch_size=4, embed_dim=8, depths=[2, 2],
      num_heads=[1, 2], window=7, drop_path_rate=0.0, remat=False,
      dtype='float32', projector_hidden_dim=16, predictor_hidden_dim=16,
      projection_dim=fx.DIM, head_activation='gelu', bn_momentum=0.9))
  models.upgrade_saved(saved)
  assert saved.head_gelu_approximate  # What it trained with.
  got, re_derived = fx.predictor_output(saved)
  np.testing.assert_allclose(got, re_derived(fx.gelu_tanh), atol=1e-5)
  assert np.abs(got - re_derived(fx.gelu_exact)).max() > 1e-4
  # Today's config keeps its exact GELU; ReLU heads gain no GELU field.
  saved.head_gelu_approximate = False
  models.upgrade_saved(saved)
  assert not saved.head_gelu_approximate
  relu = fx.tiny_config().model
  models.upgrade_saved(relu)
  assert 'head_gelu_approximate' not in relu
