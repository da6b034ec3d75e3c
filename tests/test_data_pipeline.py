"""Input pipelines on the committed Fashion-MNIST fixture and on tfds mock ImageNet."""

import gzip
import os

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh

import smog_jax.data as data
from smog_jax.data import pipeline
from smog_jax.data import settings as settings_lib
from smog_jax.data import sources

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'fashion_mnist')
N = 64  # Examples per split in the fixture.


def _raw_idx(name):
  """Independent IDX reader (fixed 16/8-byte headers of the MNIST files)."""
  with gzip.open(os.path.join(FIXTURE, name), 'rb') as f:
    raw = f.read()
  return np.frombuffer(raw, np.uint8, offset=16 if 'images' in name else 8)


@pytest.fixture(name='data_dir')
def _data_dir(fixture_data_dir):
  return fixture_data_dir


def _config(data_dir, **overrides):
  cfg = ml_collections.ConfigDict(dict(batch_size=16, seed=3, data=data.default_data_config()))
  cfg.data.data_dir = data_dir
  cfg.data.fashion_mnist_idx_dir = FIXTURE
  cfg.data.download = False
  for k, v in overrides.items():
    cfg.data[k] = v
  return cfg


def _source(s, split):
  return sources.open_source(s, split)


def _host_batches(cfg, start_step, rows, n):
  s = settings_lib.resolve(cfg)
  source = _source(s, sources.train_split(s))
  ds = pipeline.build_train_dataset(s, source, start_step, start_step + n,
                                    *rows)
  return list(ds.as_numpy_iterator())


def _mesh():
  return Mesh(np.array(jax.devices()), ('data',))


def test_offline_fashion_mnist_build_from_idx(data_dir):
  builder = sources.get_builder(settings_lib.resolve(_config(data_dir)))
  assert builder.is_prepared()
  assert builder.info.splits['train'].num_examples == N
  # Loads like a downloaded copy, through the public tfds API.
  ds = tfds.load('fashion_mnist', split='test', data_dir=data_dir, batch_size=-1,
                 download=False)
  np.testing.assert_array_equal(ds['image'].numpy().reshape(-1),
                                _raw_idx('t10k-images-idx3-ubyte.gz'))
  np.testing.assert_array_equal(ds['label'].numpy(), _raw_idx('t10k-labels-idx1-ubyte.gz'))
  assert data.num_train_examples(data.resolve(_config(data_dir))) == N
  assert data.num_train_examples(
      data.resolve(_config(data_dir, train_slice=40))) == 40


def test_missing_data_raises_one_clear_error(tmp_path):
  cfg = _config(str(tmp_path), fashion_mnist_idx_dir=str(tmp_path / 'none'))
  with pytest.raises(data.DataNotFoundError) as e:
    data.num_train_examples(data.resolve(cfg))
  msg = str(e.value)
  assert 'data_dir' in msg and 'internet' in msg and 'dataset-fashion-mnist' in msg


@pytest.fixture(name='default_batches', scope='module')
def _default_batches(fixture_data_dir):
  """Global batches of steps 0-5 (rows 0-16) of `_config`, built once."""
  return _host_batches(_config(fixture_data_dir), 0, (0, 16), 6)


def test_train_batch_contract_and_determinism(data_dir, default_batches):
  b0 = default_batches[0]
  assert b0['online_large'].shape == (16, 2, 28, 28, 1)
  assert b0['online_small'].shape == (16, 4, 14, 14, 1)
  assert b0['target_large'].shape == (16, 2, 28, 28, 1)
  for k in ('index', 'label', 'epoch'):
    assert b0[k].dtype == np.int32
  np.testing.assert_array_equal(b0['epoch'], 0)
  # uint8 crops: the photometric augmentation runs on the device.
  for k in ('online_large', 'online_small', 'target_large'):
    assert b0[k].dtype == np.uint8 and b0[k].max() > 100
  labels = _raw_idx('train-labels-idx1-ubyte.gz')
  np.testing.assert_array_equal(b0['label'], labels[b0['index']])
  # Same seed: same batch. A slice of the whole split: the same crops.
  # Different seed: different examples.
  again = _host_batches(_config(data_dir), 0, (0, 16), 1)[0]
  for k in b0:
    np.testing.assert_array_equal(b0[k], again[k])
  other = _host_batches(_config(data_dir, train_slice=N), 0, (0, 16), 1)[0]
  np.testing.assert_array_equal(other['online_large'], b0['online_large'])
  cfg_seed = _config(data_dir)
  cfg_seed.seed = 4
  assert not np.array_equal(_host_batches(cfg_seed, 0, (0, 16), 1)[0]['index'], b0['index'])
  # Different crops of the same example, and of different examples.
  v = b0['online_large']
  assert not np.array_equal(v[0, 0], v[0, 1])
  assert not np.array_equal(v[0, 0], v[1, 0])
  assert not np.array_equal(b0['online_small'][0, 0], b0['online_small'][0, 1])


def test_train_dataset_holds_the_steps_it_is_given(data_dir, default_batches):
  # Steps [3, 6) and nothing after: a run's dataset ends with its last step.
  steps_3_to_5 = _host_batches(_config(data_dir), 3, (0, 16), 3)
  assert len(steps_3_to_5) == 3
  for built, expected in zip(steps_3_to_5, default_batches[3:]):
    for k in expected:
      np.testing.assert_array_equal(built[k], expected[k])


def test_processes_cover_epoch_once_and_concatenate_to_global(data_dir,
                                                              default_batches):
  cfg = _config(data_dir)
  whole = default_batches[:5]
  p0 = _host_batches(cfg, 0, (0, 8), 5)
  p1 = _host_batches(cfg, 0, (8, 16), 5)
  for w, a, b in zip(whole, p0, p1):
    for k in w:
      np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), w[k])
  epoch0 = np.concatenate([np.concatenate([a['index'], b['index']]) for a, b in
                           zip(p0[:4], p1[:4])])
  np.testing.assert_array_equal(np.sort(epoch0), np.arange(N))  # 4 steps/epoch, no repeats.
  # Epoch 1 is shuffled differently.
  assert not np.array_equal(np.concatenate([p0[4]['index'], p1[4]['index']]), epoch0[:16])


def test_resume_at_step_equals_uninterrupted(data_dir, default_batches):
  # Steps 3-5 cross the epoch boundary at step 4.
  resumed = _host_batches(_config(data_dir), 3, (0, 16), 3)
  for a, b in zip(default_batches[3:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_online_target_swap_every_step(data_dir):
  # The same example at an even and an odd step: the two pipelines' crops
  # trade places (the device then colours them as their pipeline).
  s = settings_lib.resolve(_config(data_dir))
  source = sources.open_source(s, 'train')
  example = pipeline.train_example(s, source)
  images, labels = source.read(np.array([5]))
  even, odd = (example(tf.constant(step, tf.int64), tf.constant(1, tf.int64),
                       tf.constant(5, tf.int64), images[0], labels[0])
               for step in (2, 3))
  np.testing.assert_array_equal(even['online_large'], odd['target_large'])
  np.testing.assert_array_equal(even['target_large'], odd['online_large'])
  assert not np.array_equal(even['online_large'], even['target_large'])
  np.testing.assert_array_equal(even['epoch'], 1)


def test_global_iterator_sharded_and_equal_to_host(data_dir, default_batches):
  assert jax.device_count() == 8  # Batch 16: two rows per device.
  batch = next(data.make_train_iterator(data.resolve(_config(data_dir)),
                                        _mesh(), start_step=2, stop_step=3))
  for k, v in batch.items():
    assert v.sharding.spec == jax.sharding.PartitionSpec('data')
    np.testing.assert_array_equal(np.asarray(v), default_batches[2][k])


def test_eval_test_mode_is_identity_and_counts_each_example_once(data_dir):
  cfg = _config(data_dir)
  s = settings_lib.resolve(cfg)
  raw = _raw_idx('t10k-images-idx3-ubyte.gz').reshape(N, 28, 28, 1)
  batch, seen = 24, []  # 64 = 24 + 24 + 16: the last batch has 8 padding rows.
  for rows in [(0, 12), (12, 24)]:
    s2 = settings_lib.dataclasses.replace(s, eval_batch_size=batch)
    ds = pipeline.build_eval_dataset(s2, _source(s, 'test'), 'test', *rows)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 3
    for b in batches:
      assert b['image'].shape == (12, 28, 28, 1) and b['mask'].dtype == np.bool_
      real = b['index'][b['mask']]
      assert np.all(b['index'][~b['mask']] == N)
      # uint8 crops: normalised on the device (tests/test_eval_features.py).
      assert b['image'].dtype == np.uint8
      np.testing.assert_array_equal(b['image'][b['mask']], raw[real])
      seen.extend(real.tolist())
  np.testing.assert_array_equal(np.sort(seen), np.arange(N))


def test_eval_iterators_global(data_dir):
  cfg = _config(data_dir)
  cfg.data.eval_batch_size = 24  # 64 = 24 + 24 + 16: a padded last batch.
  mesh = _mesh()
  first = {}
  for mode in ('test', 'linear_train'):
    batches = list(data.make_eval_iterator(data.resolve(cfg), mesh, 'test',
                                           mode))
    idx = np.concatenate([np.asarray(b['index'])[np.asarray(b['mask'])] for b in batches])
    np.testing.assert_array_equal(np.sort(idx), np.arange(N))
    assert batches[0]['image'].shape == (cfg.data.eval_batch_size, 28, 28, 1)
    first[mode] = batches[0]
  # 'linear_train' is shuffled, and differently in each epoch.
  e1 = next(data.make_eval_iterator(data.resolve(cfg), mesh, 'test',
                                    'linear_train', epoch=1))
  e0 = first['linear_train']
  assert not np.array_equal(np.asarray(e0['index']), np.asarray(e1['index']))
  assert not np.array_equal(np.asarray(e0['index']),
                            np.asarray(first['test']['index']))


def test_bank_fill_in_index_order_with_padding(data_dir):
  cfg = _config(data_dir, train_slice=40, large_crop_size=20)
  batches = list(data.make_bank_fill_iterator(data.resolve(cfg), _mesh()))
  assert len(batches) == 3  # ceil(40 / 16)
  idx = np.concatenate([np.asarray(b['index']) for b in batches])
  mask = np.concatenate([np.asarray(b['mask']) for b in batches])
  np.testing.assert_array_equal(idx[:40], np.arange(40))
  assert mask[:40].all() and not mask[40:].any() and np.all(idx[40:] == 40)
  # The training crops' side, not the evaluation images'.
  assert batches[0]['large'].shape == (16, 2, 20, 20, 1)
  assert batches[0]['large'].dtype == np.uint8


def test_imagenet_jpeg_path_with_tfds_mock_data(tmp_path):
  cfg = ml_collections.ConfigDict(dict(
      batch_size=4, seed=0, data=data.default_data_config('imagenet2012')))
  cfg.data.update(dict(data_dir=str(tmp_path), image_size=32,
                       large_crop_size=24, small_image_size=16,
                       num_small_crops=2))
  with tfds.testing.mock_data(num_examples=10):
    assert data.num_train_examples(data.resolve(cfg)) == 10
    s = settings_lib.resolve(cfg)
    b0 = next(pipeline.build_train_dataset(s, _source(s, 'train'), 0, 1, 0, 4)
              .as_numpy_iterator())
    # Large crops at large_crop_size, evaluation images at image_size.
    assert b0['online_large'].shape == (4, 2, 24, 24, 3)
    assert b0['target_large'].shape == (4, 2, 24, 24, 3)
    assert b0['online_small'].shape == (4, 2, 16, 16, 3)
    assert b0['target_large'].dtype == np.uint8
    ev = list(pipeline.build_eval_dataset(s, _source(s, 'validation'), 'test',
                                          0, 4).as_numpy_iterator())
    assert sum(int(b['mask'].sum()) for b in ev) == 10
    assert ev[0]['image'].shape == (4, 32, 32, 3)
    assert ev[0]['image'].dtype == np.uint8


def test_tfrecord_only_copy_names_the_conversion(data_dir):
  # The offline Fashion-MNIST copy is TFRecord only: no random access.
  s = settings_lib.resolve(_config(data_dir))
  with pytest.raises(data.DataNotFoundError,
                     match='tfds convert_format --dataset_version_dir=.*'
                     'fashion_mnist.*--out_file_format=array_record'):
    sources.JpegSource(s, 'train')


def test_config_fields_are_read_not_invented(data_dir):
  cfg = _config(data_dir)
  cfg.data.unknown_field = 1
  with pytest.raises(ValueError, match='unknown_field'):
    settings_lib.resolve(cfg)
  cfg = _config(data_dir)
  del cfg.data['prefetch']
  with pytest.raises(ValueError, match='prefetch'):
    settings_lib.resolve(cfg)
  s = settings_lib.resolve(_config(data_dir))
  assert s.eval_batch_size == 16  # None: the training batch.
  assert s.mean == (0.2860,) and s.large_scale == (0.2, 1.0)
