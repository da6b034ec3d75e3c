"""STL-10 (tfds `stl10`) as a preset: read offline from a tiny prepared tfds
copy built in a temporary data dir; without one, the sentence that names the
command preparing it."""

import os

import numpy as np
import pytest

import eval_fixtures
from smog_jax import data as data_lib
from smog_jax import validation
from smog_jax.data import pipeline
from smog_jax.data import sources

SPLITS = {'unlabelled': 12, 'train': 6, 'test': 4}


def _examples(split, n):
  rng = np.random.default_rng(len(split))
  images = rng.integers(0, 256, (n, 96, 96, 3), np.uint8)
  labels = (np.full(n, -1) if split == 'unlabelled' else
            rng.integers(0, 10, n))
  return images, labels


@pytest.fixture(name='config', scope='module')
def _config(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  sources.write_prepared_copy('stl10', data_dir, {
      split: [dict(image=x, label=int(y)) for x, y in zip(*_examples(split, n))]
      for split, n in SPLITS.items()}, 'A test copy.')
  config = eval_fixtures.load_config('stl10', '')
  config.data.update(dict(data_dir=data_dir, download=False))
  config.batch_size = 4
  return config


def test_pretrains_on_the_unlabelled_split(config):
  s = data_lib.resolve(config)
  assert (s.train_split, s.image_size, s.large_crop_size,
          s.small_image_size) == ('unlabelled', 96, 96, 48)
  assert data_lib.num_train_examples(s) == SPLITS['unlabelled']
  images, labels = sources.open_source(s, 'unlabelled').read(np.arange(12))
  want_images, want_labels = _examples('unlabelled', 12)
  np.testing.assert_array_equal(images, want_images)
  np.testing.assert_array_equal(labels, want_labels)
  batch = next(pipeline.build_train_dataset(
      s, sources.open_source(s, 'unlabelled'), 0, 1, 0, 4)
               .as_numpy_iterator())
  assert batch['online_large'].shape == (4, 2, 96, 96, 3)
  assert batch['online_small'].shape == (4, 4, 48, 48, 3)
  validation.validate(config, 1, 1, 100_000)  # 96 px: the native size.


def test_linear_eval_reads_the_labelled_splits(config):
  probe = eval_fixtures.load_config('linear_eval', 'stl10')
  probe.data.update(dict(data_dir=config.data.data_dir, download=False))
  s = data_lib.resolve(probe)
  for split in ('train', 'test'):
    images, labels = sources.open_source(s, split).read(
        np.arange(SPLITS[split]))
    np.testing.assert_array_equal(labels, _examples(split, SPLITS[split])[1])
  assert sources.train_split(s) == 'train' and s.eval_split == 'test'
  assert probe.model.backbone == 'resnet18'


def test_without_a_copy_the_error_names_the_command(tmp_path):
  config = eval_fixtures.load_config('stl10', '')
  config.data.update(dict(data_dir=str(tmp_path), download=False))
  with pytest.raises(data_lib.DataNotFoundError) as e:
    data_lib.num_train_examples(data_lib.resolve(config))
  assert ("tfds.builder('stl10', data_dir='" + str(tmp_path) +
          "').download_and_prepare()") in str(e.value)
  assert not os.listdir(tmp_path)
