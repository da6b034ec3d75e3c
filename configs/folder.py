"""SMoG on your own images: every image under a folder.

  python -m smog_jax.main --config configs/folder.py:resnet18_96 \
      --config.data.folder=DIR --workdir runs/mine

The first run prepares the folder into config.data.data_dir (tfds's default
~/tensorflow_datasets unless set): the images as JPEG in array_record files,
read by index as ImageNet is (smog_jax.data.folder says how each kind of
image becomes RGB and what is skipped; `python -m smog_jax.prepare` does it
ahead of time). Later runs reuse that copy while the folder is unchanged; a
run resumed on a changed folder is refused, naming the files that changed.

Variants (`--config configs/folder.py:VARIANT`):
  resnet50_224  (the default) ResNet-50 at 224 px, 2 x 224 + 4 x 96 px
                crops: the ImageNet recipe (configs/imagenet_resnet50.py) at
                batch 256 (LARS lr scaled linearly: 4.8 x 256 / 4096), 200
                epochs, bfloat16; for photographs of at least ~300 px.
  resnet18_96   ResNet-18 at 96 px, 2 x 96 + 4 x 48 px crops: the STL-10
                recipe (configs/stl10.py, which says why) at batch 256;
                for small images, or a first look at a large set on one GPU.
  tiny          a 2-stage width-4 ResNet at 32 px, batch 8: what the tests
                run (seconds on a CPU).
Both real variants use 3 heads x 300 groups (the reference's 3000 for
ImageNet's 1.28 M images, the CIFAR recipe's 300 for 50 k): lower
--config.smog.num_groups for folders of fewer images, as the config check
says. Preparation keeps every image's full size; with photographs larger
than the crops need, --config.data.folder_short_side=320 (or 160 at 96 px)
keeps the host feed fast.

Labels are not needed. With images in one sub-folder per class, split as
train/ and val/, `--config.knn_every_epochs=10` turns the kNN monitor on
(val against train) and configs/linear_eval.py:folder evaluates; label-free,
the monitor stays off (its default here).
"""

import ml_collections

from smog_jax import recipes

_VARIANTS = ('resnet50_224', 'resnet18_96', 'tiny')


def _resnet(backbone: str, stem: str, dtype: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      backbone=backbone, width=1.0, stem=stem, stage_sizes=(),
      block='bottleneck' if backbone == 'resnet50' else 'basic',
      projector_hidden_dim=2048, predictor_hidden_dim=2048,
      projection_dim=128, head_activation='relu', dtype=dtype,
      bn_momentum=0.9, remat=False,
      # The reference's (torchvision's) initialisation.
      zero_init_residual=False, kernel_init='he_fan_out_normal',
      matmul_small_maps=True, padding='symmetric', backbone_bn='pooled'))


def _lars(batch_size: int) -> ml_collections.ConfigDict:
  """The reference's LARS, its learning rates scaled to `batch_size`."""
  scale = batch_size / 4096
  return ml_collections.ConfigDict(dict(
      name='lars', start_lr=0.01 * scale, peak_lr=4.8 * scale,
      end_lr=0.0048 * scale, warmup_epochs=10, weight_decay=1e-6,
      momentum=0.9, trust_coefficient=0.001, exclude_1d_from_decay=False,
      grad_clip_norm=0.0))


def _tiny(config: ml_collections.ConfigDict) -> None:
  config.batch_size = 8
  config.num_epochs = 2
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.data.update(dict(image_size=32, large_crop_size=32,
                          small_image_size=16, num_small_crops=2,
                          eval_crop_fraction=1.0, eval_batch_size=16))
  config.model = _resnet('resnet', 'cifar_stride2', 'float32')
  config.model.update(dict(stage_sizes=(1, 1), width=1 / 16,
                           projector_hidden_dim=32, predictor_hidden_dim=32,
                           projection_dim=16))
  config.smog.update(dict(num_heads=2, num_groups=4))


def get_config(variant: str = 'resnet50_224') -> ml_collections.ConfigDict:
  """The folder config; `variant` in `_VARIANTS` ('' is the default)."""
  variant = variant or 'resnet50_224'
  if variant not in _VARIANTS:
    raise ValueError(f'Unknown variant {variant!r} of folder.py; use one of '
                     f'{_VARIANTS}.')
  config = recipes.pretraining_config('folder')
  config.batch_size = 256
  config.num_epochs = 200
  config.log_every_steps = 50
  config.knn_every_epochs = -1
  config.smog.num_groups = 300
  config.optimizer = _lars(config.batch_size)
  config.model = _resnet('resnet50', 'imagenet', 'bfloat16')
  if variant == 'resnet18_96':
    config.data.update(dict(image_size=96, large_crop_size=96,
                            small_image_size=48, eval_crop_fraction=1.0))
    for pipeline in (config.data.pipeline_a, config.data.pipeline_b):
      pipeline.blur_sigma = (0.1 * 96 / 224, 2.0 * 96 / 224)
    config.model = _resnet('resnet18', 'cifar_stride2', 'bfloat16')
  elif variant == 'tiny':
    _tiny(config)
  return config
