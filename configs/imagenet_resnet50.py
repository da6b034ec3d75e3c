"""SMoG on ImageNet-1k with ResNet-50: the reference recipe (spec table).

  python -m smog_jax.main --config configs/imagenet_resnet50.py \
      --workdir gs://BUCKET/smog_r50 --config.data.data_dir=gs://BUCKET/tfds

400 epochs, global batch 4096, 2 x 224 px + 4 x 96 px crops per pipeline,
3 heads x 3000 groups of dimension 128, tau 0.1, SGD momentum 0.9 in LARS
(trust 0.001, no clipping), lr warm-up 10 epochs 0.01 -> 4.8 then cosine to
0.0048, weight decay 1e-6, target EMA 0.999, group momentum 1.0 -> 0.99.
Computes in bfloat16 (float32 parameters, BN statistics and SMoG math);
`--config.model.dtype=float32` for full precision, `--config.model.remat=True`
to trade compute for activation memory (docs/benchmarks.md).
Expected linear top-1 (the paper, reference code): 76.6 % (ResNet-50),
78.3 % (variant `:w2`, ResNet-50w2). Not yet reproduced by this project.
"""

import ml_collections

from smog_jax import recipes


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """The ImageNet ResNet-50 config; `variant` in {'', 'w2'}."""
  # The reference's batch, length and grouping: the shared defaults.
  config = recipes.pretraining_config('imagenet2012')

  config.model = ml_collections.ConfigDict(dict(
      backbone='resnet50', width=1.0, stem='imagenet', stage_sizes=(),
      block='bottleneck', projector_hidden_dim=2048, predictor_hidden_dim=2048,
      projection_dim=128, head_activation='relu', dtype='bfloat16',
      bn_momentum=0.9, remat=False,
      # The reference's (torchvision's) initialisation.
      zero_init_residual=False, kernel_init='he_fan_out_normal',
      matmul_small_maps=True, padding='symmetric',
      # The reference: every BatchNorm of the online backbone normalises
      # with statistics over the pixels of all its crops, large and small.
      backbone_bn='pooled'))

  config.optimizer = ml_collections.ConfigDict(dict(
      name='lars', start_lr=0.01, peak_lr=4.8, end_lr=0.0048,
      warmup_epochs=10, weight_decay=1e-6, momentum=0.9,
      trust_coefficient=0.001, exclude_1d_from_decay=False,
      grad_clip_norm=0.0))

  if variant == 'w2':
    config.model.width = 2.0
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of imagenet_resnet50.py; "
                     "use '' or 'w2'.")
  return config
