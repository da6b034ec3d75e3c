"""SMoG on STL-10: ResNet-18 at 96 px, pre-trained on the unlabelled split.

  python -m smog_jax.main --config configs/stl10.py --workdir runs/stl10 \
      --config.data.data_dir=DATA_DIR
  python -m smog_jax.linear_eval --config configs/linear_eval.py:stl10 \
      --config.pretrained=runs/stl10 --workdir runs/stl10_linear \
      --config.data.data_dir=DATA_DIR

tfds's `stl10`: 100,000 unlabelled 96 px images to pre-train on ('unlabelled',
held in host memory: 2.8 GB), 'train' (5,000 labelled) and 'test' (8,000)
for the linear evaluation. Offline it reads a prepared tfds copy in DATA_DIR
(without one, the error names the command that prepares it).

What was chosen, and why:
* ResNet-18 with a 3x3 stride-2 stem and no max-pool ('cifar_stride2'):
  96 px images are 3x CIFAR's side, so the CIFAR stem (stride 1) would run
  the first stage at 96 x 96 (9x its cost at 32 px), and ImageNet's (stride
  4) would leave a 3 x 3 last map; stride 2 gives a 6 x 6 one.
* The reference's multi-crop scaled to the images: 2 x 96 px + 4 x 48 px
  per pipeline (224/96 px on ImageNet; 48 = half the side, as the CIFAR
  and Fashion-MNIST presets take), the reference's crop scales, the blur's
  sigma scaled by 96/224.
* The reference's LARS at batch 512: lr scaled linearly, 4.8 x 512 / 4096,
  as configs/cifar10.py; 400 epochs (the reference's ImageNet length; 100k
  images make 195 steps an epoch); 3 heads x 600 groups (the reference's 3000
  for 1.28 M images, 300 of configs/cifar10.py for 50 k, scaled to 100 k).
* No kNN monitor: the pre-training split has no labels; the linear_eval
  variant `stl10` trains on 'train' and tests on 'test'.
Not yet run by this project: no expected top-1 is claimed. Variant `:short`
(100 epochs) for quick comparisons.
"""

import ml_collections

from smog_jax import recipes


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """The STL-10 config; `variant` in {'', 'short'}."""
  config = recipes.pretraining_config('stl10')
  config.batch_size = 512
  config.num_epochs = 400
  config.log_every_steps = 50
  config.knn_every_epochs = -1
  for pipeline in (config.data.pipeline_a, config.data.pipeline_b):
    pipeline.blur_sigma = (0.1 * 96 / 224, 2.0 * 96 / 224)

  config.model = ml_collections.ConfigDict(dict(
      backbone='resnet18', width=1.0, stem='cifar_stride2', stage_sizes=(),
      block='basic', projector_hidden_dim=2048, predictor_hidden_dim=2048,
      projection_dim=128, head_activation='relu', dtype='bfloat16',
      bn_momentum=0.9, remat=False,
      # The reference's (torchvision's) initialisation.
      zero_init_residual=False, kernel_init='he_fan_out_normal',
      matmul_small_maps=True, padding='symmetric', backbone_bn='pooled'))

  config.optimizer = ml_collections.ConfigDict(dict(
      name='lars', start_lr=0.01 * 512 / 4096, peak_lr=4.8 * 512 / 4096,
      end_lr=0.0048 * 512 / 4096, warmup_epochs=10, weight_decay=1e-6,
      momentum=0.9, trust_coefficient=0.001, exclude_1d_from_decay=False,
      grad_clip_norm=0.0))

  config.smog.num_groups = 600

  if variant == 'short':
    config.num_epochs = 100
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of stl10.py; use '' or "
                     "'short'.")
  return config
