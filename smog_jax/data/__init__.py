"""Input pipelines: multi-crop training batches, memory-bank fill, evaluation.

Public API:

* :func:`make_train_iterator` -- the training batches of docs/architecture.md, from a step.
* :func:`make_bank_fill_iterator` -- one pass in index order to fill the memory bank.
* :func:`make_eval_iterator` -- 'test' (centre crop) or 'linear_train' (RRC + flip) passes.
* :func:`num_train_examples`, :func:`steps_per_epoch`, :func:`default_data_config`.

All iterators yield dicts of global ``jax.Array`` sharded ``NamedSharding(mesh, P('data'))``
along axis 0; each process builds only its own rows (read from the mesh). TensorFlow runs on
the host CPU only, and is imported only when an iterator is built: the settings and
:func:`augment_spec` work without it.

The host decodes and makes the random-resized crops and flips (uint8); colour jitter,
grayscale, blur, solarize and normalisation of the training views run on the device
(:mod:`smog_jax.augment`, inside the jitted train step and bank fill).

Config fields read (``config.data.<name>``; unset or None means the default, which may depend
on the dataset -- see ``settings.DATASET_PRESETS``):

========================== =========================================== ========================
name                       meaning                                     default
========================== =========================================== ========================
dataset                    'fashion_mnist', 'cifar10', 'cifar100',     'fashion_mnist'
                           'imagenet2012' (tfds names)
data_dir                   tfds data dir; gs:// works                  ~/tensorflow_datasets
fashion_mnist_idx_dir      folder of the Fashion-MNIST IDX files used  /usr/share/datasets/
                           to build the tfds copy offline               fashion-mnist
download                   let tfds download when not prepared         True
train_split                training split                              'train'
train_slice                use only the first N training examples      None (all)
random_access              imagenet2012: True = read by index through  'auto'
                           tfds.data_source (array_record needed);
                           False = stream each process's part of the
                           split (TFRecord copies); 'auto' = True iff
                           the prepared copy has array_record files
channels                   C of the output images: 1 or 3 (grey        1 fashion_mnist, else 3
                           sources are replicated to 3; RGB sources
                           converted to grey for 1)
image_size                 S, side of the large crops and eval images  28 / 32 / 224
small_image_size           s, side of the small crops                  14 / 16 / 96
num_large_crops            n_large per pipeline                        2
num_small_crops            n_small (online pipeline only; may be 0)    4
large_scale                RRC area range of large crops               (0.2, 1.0)
small_scale                RRC area range of small crops               (0.05, 0.2)
aspect_ratio               RRC aspect-ratio range                      (3/4, 4/3)
linear_scale               RRC area range of 'linear_train' eval       (0.08, 1.0)
brightness, contrast       colour-jitter strengths                     0.4, 0.4
saturation, hue            colour-jitter strengths                     0.2, 0.1
jitter_prob                probability of the colour jitter            0.8
grayscale_prob             probability of grayscale                    0.2
blur_prob                  (A, B) Gaussian-blur probabilities          (1.0, 0.1)
blur_sigma                 blur sigma range, pixels of the crop        (0.1, 2.0)
solarize_prob              (A, B) solarize probabilities               (0.0, 0.2)
flip_prob                  horizontal-flip probability                 0.5
antialias                  antialiased (PIL-like) resize of the        False
                           training crops; costs ~4x host time
mean, std                  normalisation per channel (1 value is       Fashion (0.2860,),
                           broadcast to C)                             (0.3530,); CIFAR own;
                                                                       ImageNet spec values
eval_split                 default evaluation split                    'test' / 'validation'
eval_crop_fraction         centre-crop side / short side in 'test'     1.0 small, 224/256 IN
eval_batch_size            global eval batch                           config.batch_size
prefetch                   global batches kept in flight to devices    2
shuffle_buffer             shuffle buffer of streaming mode (examples) 10000
========================== =========================================== ========================

Also read: ``config.batch_size`` (global B; must divide by the number of devices) and
``config.seed`` (default 0).

Single-channel images (channels=1): brightness and contrast jitter are applied (they are
defined on grey levels); saturation, hue and grayscale are skipped (undefined without colour).
The Gaussian blur is a full Gaussian at every crop size (taps out to 3 x the largest sigma), as
PIL's ``GaussianBlur(radius=sigma)`` of the reference; sigma is in pixels of the crop.
"""

from __future__ import annotations

from typing import Iterator, Optional

import ml_collections

from smog_jax.data import settings as _settings
from smog_jax.data import sources as _sources
from smog_jax.data.settings import default_data_config
from smog_jax.data.sources import DataNotFoundError

def _pipeline():
  """The tf.data module, imported when batches are built: the settings and the
  augmentation spec are usable without TensorFlow (e.g. on accelerator hosts)."""
  from smog_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline


__all__ = [
    'DataNotFoundError',
    'augment_spec',
    'default_data_config',
    'make_bank_fill_iterator',
    'make_eval_iterator',
    'make_train_iterator',
    'num_train_examples',
    'steps_per_epoch',
]


def num_train_examples(config: ml_collections.ConfigDict) -> int:
  """Number of training examples used (after ``config.data.train_slice``)."""
  s = _settings.resolve(config)
  return _sources.num_examples(s, s.train_split, s.train_slice)


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
  """``num_train_examples // config.batch_size`` (the partial last batch is dropped)."""
  return _pipeline().steps_per_epoch(num_train_examples(config), int(config.batch_size))


def augment_spec(config: ml_collections.ConfigDict):
  """The device augmentation (``smog_jax.augment.AugmentSpec``) of ``config.data``."""
  return _settings.resolve(config).augment_spec


def make_train_iterator(config: ml_collections.ConfigDict, mesh,
                        start_step: int = 0) -> Iterator[dict]:
  """Infinite iterator of the training batches of steps ``start_step, start_step + 1, ...``.

  Args:
    config: Experiment config (``config.data``, ``config.batch_size``, ``config.seed``).
    mesh: 1-D ``jax.sharding.Mesh`` with axis 'data'.
    start_step: Global step of the first batch (for resumption).

  Returns:
    Iterator of dicts online_large u8[B,nL,S,S,C_src], online_small u8[B,nS,s,s,C_src],
    target_large u8[B,nL,S,S,C_src], index i32[B], epoch i32[B], label i32[B] (global,
    sharded on 'data'); ``smog_jax.augment.train_views`` turns the crops into float views.
  """
  s = _settings.resolve(config)
  rows = _pipeline().process_rows(mesh, s.batch_size)
  ds = _pipeline().build_train_dataset(s, start_step, *rows)
  return _pipeline().global_batches(ds.as_numpy_iterator(), mesh, s.batch_size, s.prefetch)


def make_bank_fill_iterator(config: ml_collections.ConfigDict, mesh) -> Iterator[dict]:
  """One pass over the training split in index order, to fill the memory bank.

  Returns:
    Iterator of ceil(N / B) dicts large u8[B,nL,S,S,C_src] (pipeline-A large crops, to be
    augmented on the device),
    index i32[B], mask bool[B], label i32[B]. Padding rows of the last batch have mask False
    and index N (out of range: a JAX scatter drops them).
  """
  s = _settings.resolve(config)
  rows = _pipeline().process_rows(mesh, s.batch_size)
  ds = _pipeline().build_bank_fill_dataset(s, *rows)
  return _pipeline().global_batches(ds.as_numpy_iterator(), mesh, s.batch_size, s.prefetch)


def make_eval_iterator(config: ml_collections.ConfigDict, mesh, split: Optional[str] = None,
                       mode: str = 'test', epoch: int = 0) -> Iterator[dict]:
  """One pass over an evaluation split; every example counted exactly once (mask).

  Args:
    config: Experiment config; the global batch is ``config.data.eval_batch_size`` (default
      ``config.batch_size``).
    mesh: 1-D mesh with axis 'data'.
    split: tfds split (default ``config.data.eval_split``).
    mode: 'test' (resize-free centre crop of eval_crop_fraction of the short side, resized to
      S; identity for small images at native size) or 'linear_train' (random resized crop +
      flip; order and crops keyed by ``epoch``).
    epoch: Epoch of 'linear_train' (ignored by 'test').

  Returns:
    Iterator of dicts image f32[B,S,S,C], label i32[B], index i32[B], mask bool[B].
  """
  s = _settings.resolve(config)
  rows = _pipeline().process_rows(mesh, s.eval_batch_size)
  ds = _pipeline().build_eval_dataset(s, split or s.eval_split, mode, *rows, epoch=epoch)
  return _pipeline().global_batches(ds.as_numpy_iterator(), mesh, s.eval_batch_size, s.prefetch)
