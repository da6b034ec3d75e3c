"""SMoG on CIFAR-10: ResNet-18 (CIFAR stem), 2 x 32 px + 4 x 16 px crops.

  python -m smog_jax.main --config configs/cifar10.py --workdir runs/cifar10

A single-accelerator recipe in the reference's structure, scaled down: global
batch 512, LARS with lr 4.8 x 512 / 4096 = 0.6 peak, 800 epochs, 3 x 300
groups. Not yet measured by this project: no expected top-1 is claimed.
Variant `:short` (100 epochs) for quick comparisons.
"""

import ml_collections

from smog_jax import recipes


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """The CIFAR-10 config; `variant` in {'', 'short'}."""
  config = recipes.pretraining_config('cifar10')
  config.batch_size = 512
  config.num_epochs = 800
  config.log_every_steps = 50
  config.knn_every_epochs = 20

  config.model = ml_collections.ConfigDict(dict(
      backbone='resnet18', width=1.0, stem='cifar', stage_sizes=(),
      block='basic', projector_hidden_dim=2048, predictor_hidden_dim=2048,
      projection_dim=128, head_activation='relu', dtype='float32',
      bn_momentum=0.9, remat=False,
      # The reference's (torchvision's) initialisation.
      zero_init_residual=False, kernel_init='he_fan_out_normal',
      matmul_small_maps=True, padding='symmetric',
      backbone_bn='pooled'))

  config.optimizer = ml_collections.ConfigDict(dict(
      name='lars', start_lr=0.01 * 512 / 4096, peak_lr=4.8 * 512 / 4096,
      end_lr=0.0048 * 512 / 4096, warmup_epochs=10, weight_decay=1e-6,
      momentum=0.9, trust_coefficient=0.001, exclude_1d_from_decay=False,
      grad_clip_norm=0.0))

  config.smog.num_groups = 300

  if variant == 'short':
    config.num_epochs = 100
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of cifar10.py; use '' or "
                     "'short'.")
  return config
