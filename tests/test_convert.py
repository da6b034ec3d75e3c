"""python -m smog_jax.convert: torchvision-layout checkpoints in and out.

The expected features are torchvision's own, on seeded weights
(tests/data/torchvision, written by benchmarks/torchvision_reference.py with
PyTorch); here the same weights are rebuilt in NumPy
(`smog_jax.seeded_weights`) from the converter's layout, converted, and run
through our backbones. PyTorch is never imported.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy

import cli_runs
import eval_fixtures
from smog_jax import convert
from smog_jax import export
from smog_jax import models
from smog_jax import seeded_weights
from smog_jax.evaluation import runner

FIXTURES = os.path.join(eval_fixtures.ROOT, 'tests', 'data', 'torchvision')
# Relative L2 of our features against torchvision's (float32, 224 px).
PARITY = 1e-5


def _fixture(name: str) -> dict:
  with open(os.path.join(FIXTURES, f'{name}.json')) as f:
    return json.load(f)


def _torchvision_shapes(name: str) -> dict[str, tuple[int, ...]]:
  module = models.build_backbone(convert.model_config(name))
  layout = convert.torch_layout(module, export.abstract_variables(
      module, convert.TORCHVISION_PREPROCESSING))
  return {key: entry.shape for key, entry in layout.items()}


def _seeded_state_dict(name: str) -> dict[str, np.ndarray]:
  """The fixture's weights, from the converter's layout of `name`."""
  fixture = _fixture(name)
  assert fixture['weight_rule_version'] == seeded_weights.WEIGHT_RULE_VERSION
  weights = seeded_weights.seeded_state_dict(_torchvision_shapes(name),
                                             fixture['weight_seed'])
  # Equal digests: the same keys, shapes and values as torchvision's.
  assert seeded_weights.digest(weights) == fixture['weights_sha256'], (
      "the converter's layout or the weight rule is not the fixture's")
  return weights


def _relative_l2(ours: np.ndarray, theirs: np.ndarray) -> float:
  ours, theirs = np.float64(ours), np.float64(theirs)
  return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


def _parity(export_dir: str, name: str) -> float:
  """Relative L2 of the export's features against torchvision's."""
  fixture = _fixture(name)
  batch, _, size, _ = fixture['input_shape']
  images = seeded_weights.seeded_images(fixture['input_seed'], batch, size)
  assert seeded_weights.digest({'images': images}) == fixture['input_sha256']
  module, variables = export.load_backbone(export_dir)
  features = jax.jit(lambda v, x: module.apply(v, x, train=False))(
      variables, images.transpose(0, 2, 3, 1))
  error = _relative_l2(np.asarray(features), np.float32(fixture['features']))
  print(f'{name}: relative L2 against torchvision {error:.2e}')  # pytest -s
  return error


def _write(tmp_path, weights, filename='torchvision.safetensors') -> str:
  path = str(tmp_path / filename)
  safetensors.numpy.save_file(weights, path)
  return path


def _assert_same_tensors(a, b):
  assert sorted(a) == sorted(b)
  for key in a:
    assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _run_convert(tmp_path, *flags) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-m', 'smog_jax.convert', *flags], cwd=str(tmp_path),
      env=cli_runs.environment(), capture_output=True, text=True,
      timeout=300, check=False)


def test_command_line_round_trip_with_torchvision_features(tmp_path):
  weights = _seeded_state_dict('resnet18')
  source = _write(tmp_path, weights)
  imported = str(tmp_path / 'imported')
  run = _run_convert(tmp_path, '--from_torch', source, '--model', 'resnet18',
                     '--output', imported)
  assert run.returncode == 0, run.stderr
  info = export.load_backbone_info(imported)
  assert info.step == 0 and info.model_config.dtype == 'float32'
  assert info.model_config.padding == 'symmetric'
  assert info.preprocessing == convert.TORCHVISION_PREPROCESSING
  assert _parity(imported, 'resnet18') <= PARITY

  exported = str(tmp_path / 'back.safetensors')
  run = _run_convert(tmp_path, '--to_torch', imported, '--output', exported)
  assert run.returncode == 0, run.stderr
  _assert_same_tensors(safetensors.numpy.load_file(exported), weights)


@pytest.mark.parametrize('name', ['resnet50', 'vit_s16', 'vit_b16', 'swin_t'])
def test_imported_backbone_computes_torchvision_features(name, tmp_path):
  weights = _seeded_state_dict(name)
  imported = convert.from_torch(_write(tmp_path, weights), name,
                                str(tmp_path / 'imported'))
  assert _parity(imported, name) <= PARITY
  if name in ('vit_s16', 'swin_t'):  # ResNets: the command-line test.
    exported = convert.to_torch(imported, str(tmp_path / 'back.safetensors'))
    _assert_same_tensors(safetensors.numpy.load_file(exported), weights)


def test_every_model_name_has_torchvision_keys():
  # resnet18 / 50 and the transformers: the fixtures' digests.
  resnet34 = _torchvision_shapes('resnet34')
  assert resnet34['layer3.5.conv2.weight'] == (256, 256, 3, 3)
  assert 'layer3.6.conv1.weight' not in resnet34
  assert _torchvision_shapes('resnet101')['layer3.22.conv3.weight'] == (
      1024, 256, 1, 1)
  assert _torchvision_shapes('resnet152')['layer2.7.bn3.running_var'] == (
      512,)
  # 50w2 (SwAV, SimCLR): every width doubled, stem included.
  w2 = _torchvision_shapes('resnet50w2')
  assert w2['conv1.weight'] == (128, 3, 7, 7)
  assert w2['layer4.2.conv3.weight'] == (4096, 1024, 1, 1)


@pytest.mark.parametrize('prefix', ['module.', 'module.backbone.',
                                    'backbone.', 'encoder.', 'encoder_q.'])
def test_ssl_wrappers_and_heads_are_unwrapped(prefix):
  weights = _seeded_state_dict('resnet18')
  plain, _ = convert.import_state_dict(weights, 'resnet18')
  heads = {f'{prefix}fc.0.weight': np.ones((2048, 512), np.float32),
           f'{prefix}projector.0.weight': np.ones((8, 4), np.float32),
           f'{prefix}predictor.1.bias': np.ones((8,), np.float32)}
  momentum_encoder = {f'momentum_encoder.{k}': v for k, v in weights.items()}
  checkpoint = {'epoch': 200, 'state_dict': {
      **{prefix + k: v for k, v in weights.items()}, **heads,
      **momentum_encoder, 'queue': np.zeros((128, 4), np.float32)}}
  variables, report = convert.import_state_dict(
      convert.unwrap_nesting({'model': checkpoint}), 'resnet18')
  jax.tree.map(np.testing.assert_array_equal, variables, plain)
  assert report.prefix == prefix
  assert report.dropped_heads == sorted(heads)
  assert report.dropped_outside_prefix == sorted([*momentum_encoder,
                                                  'queue'])
  assert len(report.ignored_buffers) == 20  # num_batches_tracked, per BN.


def test_vit_keeps_its_own_encoder_keys():
  weights = _seeded_state_dict('vit_s16')
  plain, report = convert.import_state_dict(weights, 'vit_s16')
  assert report.prefix == ''  # torchvision's keys start with encoder.
  # An SSL wrapper named encoder., a classifier, and pre-0.13 MLP names.
  wrapped = {'encoder.' + k.replace('mlp.0.', 'mlp.linear_1.'): v
             for k, v in weights.items()}
  wrapped['encoder.heads.head.weight'] = np.ones((10, 384), np.float32)
  variables, report = convert.import_state_dict(wrapped, 'vit_s16')
  assert report.prefix == 'encoder.'
  assert report.dropped_heads == ['encoder.heads.head.weight']
  jax.tree.map(np.testing.assert_array_equal, variables, plain)


def test_missing_unexpected_and_misshaped_keys_are_named():
  weights = _seeded_state_dict('resnet18')
  missing = {k: v for k, v in weights.items()
             if k != 'layer4.1.bn2.running_var'}
  with pytest.raises(convert.ConversionError,
                     match=r"lacks 1 key .*layer4\.1\.bn2\.running_var"):
    convert.import_state_dict(missing, 'resnet18')
  extra = dict(weights, **{'layer5.0.conv1.weight': np.ones((1,), 'f4')})
  with pytest.raises(convert.ConversionError,
                     match=r'has 1 key .*layer5\.0\.conv1\.weight'):
    convert.import_state_dict(extra, 'resnet18')
  misshaped = dict(weights, **{'conv1.weight': np.ones((64, 3, 3, 3), 'f4')})
  with pytest.raises(convert.ConversionError,
                     match=r'conv1\.weight has shape \(64, 3, 3, 3\) where '
                     r"torchvision's resnet18 has \(64, 3, 7, 7\)"):
    convert.import_state_dict(misshaped, 'resnet18')
  with pytest.raises(convert.ConversionError,
                     match=r'lacks .*layer1\.0\.conv3\.weight'):
    convert.import_state_dict(weights, 'resnet50')
  with pytest.raises(convert.ConversionError, match='No key of'):
    convert.import_state_dict({'x.weight': np.ones(1)}, 'resnet18')


def test_swin_relative_position_index_is_checked():
  weights = _seeded_state_dict('swin_t')
  key = 'features.1.0.attn.relative_position_index'
  weights[key] = weights[key][::-1].copy()
  with pytest.raises(convert.ConversionError, match=key):
    convert.import_state_dict(weights, 'swin_t')


@pytest.mark.skipif(importlib.util.find_spec('torch') is not None,
                    reason='PyTorch is installed: the .pth path works here.')
def test_pickle_without_pytorch_is_one_sentence(tmp_path):
  path = tmp_path / 'checkpoint.pth.tar'
  path.write_bytes(b'not read')
  run = _run_convert(tmp_path, '--from_torch', str(path), '--model',
                     'resnet50', '--output', str(tmp_path / 'out'))
  assert run.returncode == 1
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith('smog_jax.convert: ') and 'needs PyTorch' in last
  assert 'Traceback' not in run.stderr


def test_linear_eval_and_knn_accept_an_imported_backbone(fixture_data_dir,
                                                          tmp_path):
  imported = convert.from_torch(
      _write(tmp_path, _seeded_state_dict('resnet18')), 'resnet18',
      str(tmp_path / 'imported'))
  for mode in ('fast', 'knn'):
    config = eval_fixtures.use_fixture(
        eval_fixtures.load_config('linear_eval', 'fashion_mnist_tiny'),
        fixture_data_dir)
    config.mode = mode
    config.pretrained = imported
    config.batch_size = 16
    config.data.train_slice = None
    config.data.eval_split = 'test'
    config.data.eval_batch_size = 16
    config.linear.epochs = 2
    # Grey Fashion-MNIST replicated to the backbone's three channels.
    results = runner.run(config, str(tmp_path / mode))
    assert results['feature_dim'] == 512
    assert results['num_test_examples'] == 64
    assert 0.0 <= results['top1'] <= 100.0


def test_pretraining_workdir_exports_torchvision_layout(pretrain, tmp_path,
                                                        caplog):
  workdir, _, state = pretrain
  params, stats = state.params['backbone'], state.batch_stats['backbone']
  path = convert.to_torch(workdir, str(tmp_path / 'tiny.safetensors'))
  tensors = safetensors.numpy.load_file(path)
  # The `:tiny` ResNet: 3x3 stride-2 stem, two basic stages of 4 and 8.
  np.testing.assert_array_equal(
      tensors['conv1.weight'],
      params['conv_init']['kernel'].transpose(3, 2, 0, 1))
  np.testing.assert_array_equal(tensors['layer2.0.bn2.running_var'],
                                stats['BasicBlock_1']['BatchNorm_1']['var'])
  np.testing.assert_array_equal(
      tensors['layer2.0.downsample.1.weight'],
      params['BasicBlock_1']['norm_proj']['scale'])
  assert tensors['bn1.num_batches_tracked'].dtype == np.int64
  assert "stem 'cifar_stride2'" in caplog.text
  with pytest.raises(convert.ConversionError, match='exists'):
    convert.to_torch(workdir, path)
  with pytest.raises(convert.ConversionError, match='does not exist'):
    convert.to_torch(str(tmp_path / 'nowhere'), str(tmp_path / 'x.safetensors'))
