"""Host input-pipeline throughput, in images per second per CPU core.

The host decodes and crops; colour, blur and solarize run on the device
(smog_jax/augment.py, timed by benchmarks/train_step.py). So:
(a) ImageNet multi-crop from JPEG bytes: the training pipeline of smog_jax.data on synthetic
    ~500x375 JPEGs (smooth, natural-looking colour fields with edges). Per image it produces what
    a step uses: online pipeline 2 x 224 + 4 x 96, target pipeline 2 x 224 (8 uint8 crops; the
    reference also makes the target pipeline's 4 small crops, 12 in all, and discards them),
    with and without antialiased resizing; and JPEG decoding alone, the floor.
(a') The same host feed reading the same JPEGs from a prepared folder
    (--config.data.dataset=folder: files -> smog_jax.prepare -> array_record
    read through tfds, as imagenet2012 is read), alternated with (a)'s
    in-memory bytes, which cost nothing to read: the folder's ratio to it.
(b) The Fashion-MNIST training pipeline (2 x 28 + 4 x 14 online, 2 x 28 target).
If torch + torchvision are importable, the reference's full augmentation of the same crops
(RandomResizedCrop, flip, colour jitter, grayscale, PIL GaussianBlur(radius=sigma), solarize,
normalise; decode once with PIL) is timed single-threaded, and the ratio is printed.

Usage: python benchmarks/input_pipeline.py [--images 96] [--fashion_images 4096]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

# TensorFlow and torch crash when imported into one process here, so the torchvision timing
# runs in a child process (--torch_worker) that never imports TensorFlow.


def synthetic_jpegs(n: int, seed: int = 0) -> list[bytes]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  """``n`` JPEGs of 500x375 or 375x500: blurred colour noise + gradients + shapes, quality 90."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    h, w = (375, 500) if i % 3 else (500, 375)
    low = rng.uniform(0, 255, (h // 25 + 2, w // 25 + 2, 3)).astype(np.float32)
    img = tf.image.resize(low[None], (h, w), method='bicubic')[0].numpy()
    yy, xx = np.mgrid[:h, :w]
    img += 40 * np.sin(xx[..., None] / rng.uniform(10, 60) + rng.uniform(0, 6, 3))
    for _ in range(5):  # Hard edges, as objects have.
      cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(20, 120)
      img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)  # Sensor noise / texture.
    pixels = np.clip(img, 0, 255).astype(np.uint8)
    out.append(tf.io.encode_jpeg(pixels, quality=90).numpy())
  return out


def cores() -> int:
  return len(os.sched_getaffinity(0))


def time_tf(ds, num_images: int, batch: int) -> float:
  """Images/s of a dataset of batches on one thread, after a warm-up batch.

  One thread, as torchvision's comparison runs: on a shared machine the
  per-core rate is then measured directly, not divided out of a busy pool.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  it = ds.with_options(options).as_numpy_iterator()
  next(it)
  t = time.perf_counter()
  for _ in range(num_images // batch):
    next(it)
  return (num_images // batch) * batch / (time.perf_counter() - t)


def bench_imagenet(num_images: int, jpegs: list[bytes], antialias: bool) -> float:
  import ml_collections  # pylint: disable=g-import-not-at-top
  from smog_jax.data import default_data_config  # pylint: disable=g-import-not-at-top
  from smog_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from smog_jax.data import settings as settings_lib  # pylint: disable=g-import-not-at-top
  from smog_jax.data import sources  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(
      batch_size=16, seed=0, data=default_data_config('imagenet2012')))
  cfg.data.antialias = antialias
  s = settings_lib.resolve(cfg)
  # In-memory JPEG bytes: the same DataSource interface as tfds.data_source.
  source = sources.ArraySource(np.array(jpegs, dtype=object),
                               np.arange(len(jpegs), dtype=np.int32) % 1000)
  ds = pipeline.build_train_dataset(s, source, 0, num_images // 16 + 1, 0, 16)
  return time_tf(ds, num_images, 16)


def bench_folder(num_images: int, jpegs: list[bytes], rounds: int = 2):
  """(folder, in-memory) images/s, best of `rounds` alternations each.

  The JPEGs are written as files, prepared (kept byte for byte), and read
  back through `sources.open_source` (tfds's array_record random access).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from smog_jax.data import default_data_config  # pylint: disable=g-import-not-at-top
  from smog_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from smog_jax.data import settings as settings_lib  # pylint: disable=g-import-not-at-top
  from smog_jax.data import sources  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    for i, jpeg in enumerate(jpegs):
      os.makedirs(os.path.join(tmp, 'images', f'{i % 4}'), exist_ok=True)
      with open(os.path.join(tmp, 'images', f'{i % 4}', f'{i}.jpg'), 'wb') as f:
        f.write(jpeg)
    cfg = ml_collections.ConfigDict(dict(
        batch_size=16, seed=0, data=default_data_config('folder')))
    cfg.data.update(dict(folder=os.path.join(tmp, 'images'),
                         data_dir=os.path.join(tmp, 'tfds')))
    s = settings_lib.resolve(cfg)
    source = sources.open_source(s, 'train')
    folder, memory = [], []
    for _ in range(rounds):
      ds = pipeline.build_train_dataset(s, source, 0, num_images // 16 + 1, 0,
                                        16)
      folder.append(time_tf(ds, num_images, 16))
      memory.append(bench_imagenet(num_images, jpegs, False))
  return max(folder), max(memory)


def bench_decode(num_images: int, jpegs: list[bytes]) -> float:
  """Images/s of `tf.io.decode_jpeg` alone in the same tf.data set-up."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat()
  ds = ds.map(lambda b: tf.reduce_sum(tf.cast(tf.io.decode_jpeg(b, channels=3)[:1, :1],
                                              tf.int32)),
              num_parallel_calls=tf.data.AUTOTUNE).batch(16).prefetch(tf.data.AUTOTUNE)
  return time_tf(ds, num_images, 16)


def bench_fashion(num_images: int) -> tuple[float, str]:
  import ml_collections  # pylint: disable=g-import-not-at-top
  from smog_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from smog_jax.data import settings as settings_lib  # pylint: disable=g-import-not-at-top
  from smog_jax.data import sources  # pylint: disable=g-import-not-at-top
  idx_dir = '/usr/share/datasets/fashion-mnist'
  what = 'full Fashion-MNIST (Debian IDX files)'
  if not sources.idx_files_available(idx_dir):
    idx_dir = os.path.join(os.path.dirname(__file__), '..', 'tests', 'data', 'fashion_mnist')
    what = '64-image test fixture'
  from smog_jax.data import default_data_config  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(
      batch_size=256, seed=0, data=default_data_config('fashion_mnist')))
  cfg.data.update(dict(data_dir=tempfile.mkdtemp(), fashion_mnist_idx_dir=idx_dir,
                       download=False))
  s = settings_lib.resolve(cfg)
  batch = min(256, 64 if 'fixture' in what else 256)
  s = settings_lib.dataclasses.replace(s, batch_size=batch)
  source = sources.open_source(s, 'train')
  ds = pipeline.build_train_dataset(s, source, 0, num_images // batch + 1, 0,
                                    batch)
  return time_tf(ds, num_images, batch), what


def torchvision_rate(jpegs: list[bytes], num_images: int, small_per_pipeline: tuple[int, int],
                     large: int = 224, small: int = 96, grey: bool = False):
  """Images/s of the same crops with torchvision/PIL in one thread; None if unavailable."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from torchvision import transforms as T  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(1)
  from PIL import ImageFilter  # pylint: disable=g-import-not-at-top
  mean, std = ((0.286,), (0.353,)) if grey else ((0.485, 0.456, 0.406), (0.228, 0.224, 0.225))
  # The reference's blur: PIL's Gaussian of radius (= sigma) uniform in [0.1, 2].
  blur = T.Lambda(lambda im: im.filter(ImageFilter.GaussianBlur(random.uniform(0.1, 2.0))))

  def pipe(size, scale, blur_p, sol_p):
    return T.Compose([
        T.RandomResizedCrop(size, scale=scale), T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(0.2),
        T.RandomApply([blur], p=blur_p), T.RandomSolarize(128, p=sol_p), T.ToTensor(),
        T.Normalize(mean, std)])

  a_large, a_small = pipe(large, (0.2, 1.0), 1.0, 0.0), pipe(small, (0.05, 0.2), 1.0, 0.0)
  b_large, b_small = pipe(large, (0.2, 1.0), 0.1, 0.2), pipe(small, (0.05, 0.2), 0.1, 0.2)

  def one(data):
    img = Image.open(io.BytesIO(data)).convert('L' if grey else 'RGB')
    crops = [a_large(img) for _ in range(2)] + [a_small(img) for _ in range(small_per_pipeline[0])]
    crops += [b_large(img) for _ in range(2)] + [b_small(img) for _ in range(small_per_pipeline[1])]
    return crops

  one(jpegs[0])
  t = time.perf_counter()
  for i in range(num_images):
    one(jpegs[i % len(jpegs)])
  return num_images / (time.perf_counter() - t)


def _torch_worker(path: str, num_images: int) -> None:
  """Child process: times torchvision on the images stored at ``path``; prints JSON."""
  blobs = np.load(path, allow_pickle=False)
  offsets = blobs['offsets']
  jpegs = [blobs['data'][offsets[i]:offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]
  result = {'tv8': torchvision_rate(jpegs, num_images, (4, 0))}
  if result['tv8'] is not None:
    result['tv12'] = torchvision_rate(jpegs, num_images, (4, 4))
    from PIL import Image  # pylint: disable=g-import-not-at-top
    pngs = []
    for img in np.random.default_rng(0).integers(0, 255, (64, 28, 28), dtype=np.uint8):
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format='PNG')
      pngs.append(buf.getvalue())
    result['fashion'] = torchvision_rate(pngs, 2000, (4, 0), large=28, small=14, grey=True)
  print('RESULT ' + json.dumps(result))


def _run_torch_worker(jpegs: list[bytes], num_images: int) -> dict:
  offsets = np.cumsum([0] + [len(j) for j in jpegs])
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'jpegs.npz')
    np.savez(path, data=np.frombuffer(b''.join(jpegs), np.uint8), offsets=offsets)
    proc = subprocess.run([sys.executable, __file__, '--torch_worker', path, '--images',
                           str(num_images)], capture_output=True, text=True, check=False)
  for line in proc.stdout.splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[len('RESULT '):])
  return {'tv8': None, 'error': proc.stderr[-500:]}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--images', type=int, default=96)
  parser.add_argument('--fashion_images', type=int, default=4096)
  parser.add_argument('--torch_worker', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.torch_worker:
    _torch_worker(args.torch_worker, args.images)
    return
  from smog_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.hide_accelerators_from_tf()
  print(f'CPU cores available: {cores()}; every rate is measured on one thread.')

  jpegs = synthetic_jpegs(64)
  decode = bench_decode(args.images, jpegs)
  print(f'(a) ImageNet, JPEG decoding alone, tf.data: {decode:.1f} images/s/core')
  rates = {aa: bench_imagenet(args.images, jpegs, aa) for aa in (False, True)}
  for aa, rate in rates.items():
    print(f'    multi-crop host feed (decode + online 2x224+4x96 + target 2x224, uint8), '
          f'antialias={aa}: {rate:.1f} images/s/core')
  rate = rates[False]
  tv = _run_torch_worker(jpegs, max(16, args.images // 3))
  if tv['tv8'] is None:
    print('torch/torchvision not importable: skipping the torchvision comparison.')
  else:
    print(f'    torchvision/PIL, reference augmentation of the same 8 crops, 1 thread: '
          f'{tv["tv8"]:.1f} images/s/core; ratio host feed/torchvision = '
          f'{rate / tv["tv8"]:.2f} (antialias=True: '
          f'{rates[True] / tv["tv8"]:.2f})')
    print(f'    torchvision/PIL, reference 12 crops 2x(2x224+4x96), 1 thread: {tv["tv12"]:.1f} '
          f'images/s/core; ratio = {rate / tv["tv12"]:.2f}')

  folder, memory = bench_folder(args.images, jpegs)
  print(f"(a') prepared folder (array_record through tfds), the same crops, antialias=False: "
        f'{folder:.1f} images/s/core; in-memory JPEG bytes alternated with it: {memory:.1f}; '
        f'ratio folder / in-memory = {folder / memory:.3f} (best of 2 each)')

  rate, what = bench_fashion(args.fashion_images)
  print(f'(b) Fashion-MNIST multi-crop ({what}; online 2x28+4x14, target 2x28), tf.data: '
        f'{rate:.1f} images/s/core')
  if tv['tv8'] is not None:
    print(f'    torchvision/PIL, same crops, 1 thread: {tv["fashion"]:.1f} images/s/core; '
          f'ratio tf.data/torchvision = {rate / tv["fashion"]:.2f}')


if __name__ == '__main__':
  main()
