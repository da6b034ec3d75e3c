"""A folder of images as a dataset (smog_jax.data.folder), on generated trees:
what preparation keeps, skips and how it converts each kind of image; a
tiny pre-training; kNN and the linear probe on a labelled tree; process
independence of the batches; a changed folder refused on resume."""

import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import cli_runs
import eval_fixtures
from smog_jax import report
from smog_jax import validation
from smog_jax.data import folder
from smog_jax.data import pipeline
from smog_jax.data import settings as settings_lib
from smog_jax.data import sources
from smog_jax.evaluation import runner

BAD = {'empty.jpg': 'empty file', 'notes.txt': 'not an image',
       'deep/er/truncated.jpg': 'truncated'}


def _smooth(h, w, channels, seed):
  """Smooth uint8 pixels (JPEG keeps them within a few levels)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w] / max(h, w)
  planes = [127.5 + 120 * np.sin(2 * np.pi * (a * x + b * y) + c)
            for a, b, c in rng.uniform(0.2, 1.2, (channels, 3))]
  return np.rint(np.stack(planes, -1)).astype(np.uint8)


def _save(root, rel, image, **kwargs):
  path = os.path.join(root, *rel.split('/'))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, **kwargs)
  return path


def _oriented_jpeg(root):
  exif = Image.Exif()
  exif[0x0112] = 6  # Shown rotated 90 degrees clockwise.
  _save(root, 'deep/rotated.jpg', Image.fromarray(_smooth(24, 40, 3, 9)),
        exif=exif, quality=95)
  return np.rot90(_smooth(24, 40, 3, 9), -1)


def _mixed_tree(root):
  """A label-free tree of every kind; {path: expected RGB or 'bytes'}."""
  want = {}
  for i in range(10):  # RGB JPEGs of several sizes, kept byte for byte.
    rel = f'{"deep/er/" if i % 3 == 0 else ""}photo{i}.jpg'
    _save(root, rel, Image.fromarray(_smooth(40 + 3 * i, 60 - 2 * i, 3, i)),
          quality=90)
    want[rel] = 'bytes'
  grey = _smooth(30, 40, 1, 20)[..., 0]
  _save(root, 'grey.jpg', Image.fromarray(grey), quality=90)
  want['grey.jpg'] = 'bytes'
  rgba = _smooth(36, 28, 4, 21)
  _save(root, 'rgba.png', Image.fromarray(rgba, 'RGBA'))
  want['rgba.png'] = rgba[..., :3]  # Alpha dropped.
  deep16 = (_smooth(30, 30, 1, 22)[..., 0].astype(np.uint16) * 257 + 100)
  _save(root, 'deep/sixteen.png', Image.fromarray(deep16))
  want['deep/sixteen.png'] = np.repeat(
      np.rint(deep16.astype(float) * 255 / 65535).astype(np.uint8)[..., None], 3, -1)
  cmy = _smooth(32, 32, 3, 23)
  cmyk = np.concatenate([cmy, np.zeros_like(cmy[..., :1])], -1)  # K = 0.
  _save(root, 'cmyk.jpg', Image.fromarray(cmyk, 'CMYK'), quality=95)
  want['cmyk.jpg'] = 255 - cmy
  rgb = _smooth(34, 30, 3, 24)
  for rel, kwargs in (('ünïcødé.png', {}), ('lossless.webp',
                                            {'lossless': True}),
                      ('plain.bmp', {}), ('scan.tiff', {})):
    _save(root, rel, Image.fromarray(rgb), **kwargs)
    want[rel] = rgb
  ramp = np.arange(256)
  palette = np.stack([ramp, 255 - ramp, ramp // 2], -1).astype(np.uint8)
  frames = [Image.fromarray(_smooth(30, 30, 1, s)[..., 0], 'P')
            for s in (25, 26)]
  for frame in frames:
    frame.putpalette(palette.ravel().tolist())
  _save(root, 'anim.gif', frames[0], save_all=True, append_images=frames[1:])
  want['anim.gif'] = palette[np.asarray(frames[0])]  # The first frame.
  want['deep/rotated.jpg'] = _oriented_jpeg(root)
  open(os.path.join(root, 'empty.jpg'), 'wb').close()
  with open(os.path.join(root, 'notes.txt'), 'w') as f:
    f.write('not an image')
  with open(os.path.join(root, 'photo1.jpg'), 'rb') as f:
    head = f.read()[:400]
  with open(os.path.join(root, 'deep', 'er', 'truncated.jpg'), 'wb') as f:
    f.write(head)
  with open(os.path.join(root, '.DS_Store'), 'wb') as f:
    f.write(b'hidden: never listed')
  return want


def _labelled_tree(root):
  """train/ and val/ of cats (red) and dogs (blue), cats nested deeper."""
  for split, n in (('train', 6), ('val', 3)):
    for label, (name, channel) in enumerate((('cats', 0), ('dogs', 2))):
      for i in range(n):
        pixels = _smooth(40, 48, 3, 100 + 10 * label + i) // 3
        pixels[..., channel] = 200 + pixels[..., channel] // 4
        sub = 'indoor/' if name == 'cats' and i % 2 else ''
        _save(root, f'{split}/{name}/{sub}{i}.jpg', Image.fromarray(pixels),
              quality=90)


@pytest.fixture(name='mixed', scope='module')
def _mixed(tmp_path_factory):
  """(tree, data_dir, expected pixels), prepared once."""
  root = str(tmp_path_factory.mktemp('mixed'))
  tree = os.path.join(root, 'images')
  want = _mixed_tree(tree)
  data_dir = os.path.join(root, 'tfds')
  folder.prepare(tree, data_dir, None, workers=2)
  return tree, data_dir, want


def _settings(tree, data_dir, variant='tiny', **data):
  config = eval_fixtures.load_config('folder', variant)
  config.data.update(dict(folder=tree, data_dir=data_dir, **data))
  return settings_lib.resolve(config)


def _decode(raw):
  return np.asarray(Image.open(io.BytesIO(raw)).convert('RGB'))


def test_layout_gives_classes_splits_or_none():
  entry = lambda path: folder.Entry(path, 1, 1)
  classes = folder.layout(tuple(map(entry, (
      'b/x.jpg', 'a/deep/y.png', 'README.txt', 'a/z.jpg'))))
  assert classes.classes == ('a', 'b')
  assert classes.labels == (1, 0, -1, 0) and set(classes.splits) == {'train'}
  splits = folder.layout(tuple(map(entry, (
      'train/dog/1.jpg', 'train/cat/2.jpg', 'val/cat/3.jpg'))))
  assert splits.splits == ('train', 'train', 'val')
  assert splits.labels == (1, 0, 0)
  free = folder.layout(tuple(map(entry, ('a/x.jpg', 'top.jpg'))))
  assert free.classes == () and free.labels == (-1, -1)


def test_preparation_keeps_converts_and_skips(mixed):
  tree, data_dir, want = mixed
  s = _settings(tree, data_dir)
  source = sources.open_source(s, 'train')
  assert len(source) == len(want)
  images, labels = source.read(np.arange(len(want)))
  np.testing.assert_array_equal(labels, -1)  # Label-free.
  for rel, raw in zip(sorted(want), images):  # Sorted path order.
    expected = want[rel]
    if isinstance(expected, str):
      with open(os.path.join(tree, rel), 'rb') as f:
        assert raw == f.read(), rel
      continue
    got = _decode(raw).astype(int)
    assert got.shape == expected.shape, rel
    assert np.abs(got - expected).mean() < 2.5, rel
  out = os.path.dirname(os.fspath(sources.get_builder(s).data_dir))
  with open(os.path.join(out, folder.SKIPPED_FILE), encoding='utf-8') as f:
    skipped = dict(line.rstrip('\n').split('\t') for line in f)
  assert skipped.keys() == BAD.keys()
  for rel, why in BAD.items():
    assert why in skipped[rel].lower()


def test_unchanged_folder_reused_changes_named(mixed, tmp_path):
  tree, data_dir, _ = mixed
  tree = shutil.copytree(tree, str(tmp_path / 'copy'))
  before = folder.list_folder(tree)
  first = folder.prepare(tree, data_dir, None, workers=1)
  stamp = os.stat(first).st_mtime_ns
  assert folder.prepare(tree, data_dir, None, workers=1) == first
  assert os.stat(first).st_mtime_ns == stamp  # Not written again.
  os.remove(os.path.join(tree, 'plain.bmp'))
  shutil.copy(os.path.join(tree, 'grey.jpg'), os.path.join(tree, 'new.jpg'))
  with open(os.path.join(tree, 'photo2.jpg'), 'ab') as f:
    f.write(b'\0')
  after = folder.list_folder(tree)
  assert folder.fingerprint(after) != folder.fingerprint(before)
  assert folder.listing_difference(before, after) == (
      '1 file added (new.jpg), 1 file removed (plain.bmp), 1 file modified '
      '(photo2.jpg)')


def test_shrinking_and_decompression_bombs(tmp_path, monkeypatch):
  big = _smooth(120, 90, 3, 30)
  jpeg = _save(str(tmp_path), 'big.jpg', Image.fromarray(big), quality=95)
  png = _save(str(tmp_path), 'big.png', Image.fromarray(big))
  raw, _ = folder.encode(jpeg, short_side=30)
  assert _decode(raw).shape == (40, 30, 3)  # Short side 90 -> 30.
  monkeypatch.setattr(folder, 'MAX_PIXELS', 2000)
  raw, why = folder.encode(png, short_side=None)
  assert raw is None and 'decompression bomb' in why
  raw, _ = folder.encode(jpeg, short_side=None)  # Decoded at 1/4 scale.
  h, w, _ = _decode(raw).shape
  assert h * w <= 2000 and abs(h / w - 120 / 90) < 0.05


def test_empty_folder_or_too_few_images_is_one_sentence(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(folder.FolderError, match='holds no image that can be '
                     r'read \(0 files'):
    folder.prepare(str(tmp_path / 'empty'), str(tmp_path / 'tfds'), None,
                   workers=1)
  config = eval_fixtures.load_config('folder', 'tiny')
  config.data.folder = str(tmp_path)
  with pytest.raises(validation.ConfigError,
                     match='batch_size=8 exceeds the 5 images'):
    validation.validate(config, 1, 1, 5)


def test_knn_monitor_on_a_label_free_folder_is_refused(mixed):
  config = eval_fixtures.load_config('folder', 'tiny')
  config.data.update(dict(folder=mixed[0], data_dir=mixed[1]))
  validation.validate(config, 1, 1, 24)  # The monitor off: the default.
  config.knn_every_epochs = 1
  with pytest.raises(validation.ConfigError, match=(
      r"needs class labels in the split 'val' of .* \(its splits: "
      r"\['train'\], without class folders\): set "
      r'--config.knn_every_epochs=-1')):
    validation.validate(config, 1, 1, 24)


def test_processes_read_the_global_batch(mixed):
  s = _settings(*mixed[:2])
  source = sources.open_source(s, 'train')
  whole, first, second = (
      list(pipeline.build_train_dataset(s, source, 0, 3, *rows)
           .as_numpy_iterator()) for rows in ((0, 8), (0, 4), (4, 8)))
  assert len(whole) == 3 and whole[0]['online_large'].shape == (
      8, 2, 32, 32, 3)
  for w, a, b in zip(whole, first, second):
    for key in w:
      np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), w[key])


def _main(tree, data_dir, workdir):
  return subprocess.run(
      [sys.executable, '-m', 'smog_jax.main', '--config',
       os.path.join(cli_runs.REPO, 'configs', 'folder.py:tiny'),
       '--workdir', workdir, f'--config.data.folder={tree}',
       f'--config.data.data_dir={data_dir}', '--config.total_steps=4'],
      env=cli_runs.environment(), capture_output=True, text=True,
      timeout=300, check=False)


def test_pretraining_then_a_changed_folder_is_refused(mixed, tmp_path):
  tree = shutil.copytree(mixed[0], str(tmp_path / 'images'))
  workdir = str(tmp_path / 'run')
  run = _main(tree, mixed[1], workdir)
  assert run.returncode == 0, run.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [
      '2', '4']
  # Its report draws groups and neighbours from the prepared JPEGs, with no
  # classes: the folder has no labels.
  page = report.write_report(workdir, images_per_group=3, num_queries=2,
                             num_neighbours=3)
  assert sorted(os.listdir(os.path.dirname(page))) == [
      'curves.png', 'group_sizes.png', 'groups.png', 'index.html',
      'neighbours.png']
  examples = report.Examples(report.load_run(workdir).data)
  thumbnail = examples.image(0)
  assert thumbnail.dtype == np.uint8 and thumbnail.shape[-1] == 3
  assert max(thumbnail.shape[:2]) <= report.THUMBNAIL_SIDE
  everyone = np.arange(len(examples))
  assert examples.names(examples.labels(everyone)) is None
  assert report.class_agreement(examples, everyone[:2],
                                everyone[None, 2:4].repeat(2, 0)) is None
  shutil.copy(os.path.join(tree, 'grey.jpg'),
              os.path.join(tree, 'deep', 'added.jpg'))
  run = _main(tree, mixed[1], workdir)
  assert run.returncode == 1 and 'Traceback' not in run.stderr
  assert ('the folder changed since: 1 file added (deep/added.jpg)); use a '
          'new --workdir' in run.stderr.splitlines()[-1])


def test_linear_eval_of_a_label_free_folder_is_one_sentence(mixed, tmp_path):
  config = eval_fixtures.load_config('linear_eval', 'folder')
  config.data.update(dict(folder=mixed[0], data_dir=mixed[1]))
  config.pretrained = 'pixels'
  with pytest.raises(validation.ConfigError,
                     match=r"smog_jax.linear_eval \(mode 'linear'\) needs "
                     r"class labels in the split 'val' .* without class "
                     r'folders\): evaluate a labelled dataset, or lay'):
    runner.run(config, str(tmp_path / 'linear'))
  assert not os.path.exists(tmp_path / 'linear' / 'results.json')


def test_knn_and_linear_probe_use_the_class_folders(tmp_path):
  tree = str(tmp_path / 'images')
  _labelled_tree(tree)
  config = eval_fixtures.load_config('linear_eval', 'folder')
  config.data.update(dict(folder=tree, data_dir=str(tmp_path / 'tfds'),
                          image_size=16, eval_crop_fraction=1.0,
                          eval_batch_size=8))
  config.update(dict(pretrained='pixels', batch_size=4, mode='knn'))
  config.knn.k = 3
  knn = runner.run(config, str(tmp_path / 'knn'))
  assert knn['num_train_examples'] == 12 and knn['num_test_examples'] == 6
  assert knn['top1'] == 100.0  # Red cats, blue dogs: labels from folders.
  config.mode = 'fast'
  config.linear.update(dict(epochs=10, learning_rate=0.5))
  assert runner.run(config, str(tmp_path / 'fast'))['top1'] == 100.0
