"""SMoG on ImageNet-1k with ViT-S/16 (variant `:b16`: ViT-B/16).

  python -m smog_jax.main --config configs/imagenet_vit_s16.py \
      --workdir gs://BUCKET/smog_vit_s16 --config.data.data_dir=gs://BUCKET/tfds

The paper trains no ViT: this is the Swin-T recipe (configs/imagenet_swin_t.py,
loaded below) with a ViT backbone: 400 epochs, global batch 4096,
2 x 224 px + 4 x 96 px crops (the position table learned for 14 x 14 patches
is resized to 6 x 6 for the small crops), class-token features, 3 heads x
3000 groups of dimension 256, GELU heads, AdamW (0.9, 0.999) clipped at 3.0,
lr 4e-5 -> 1e-3 -> 4e-5, weight decay 0.05 (none on 1-D parameters, biases,
position table and class token), drop path 0.1 online (this project's
choice: no reference value), 0 on the target. Computes in bfloat16.
No reference result exists to expect; linear-eval config
`configs/linear_eval.py:imagenet2012_vit_s16` (or `_vit_b16`).
"""

import os

import ml_collections

from smog_jax import recipes


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """The ImageNet ViT config; `variant` in {'', 'b16'}."""
  if variant not in ('', 'b16'):
    raise ValueError(f"Unknown variant {variant!r} of imagenet_vit_s16.py; "
                     "use '' or 'b16'.")
  config = recipes.load_config(
      os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   'imagenet_swin_t.py'))
  config.model = ml_collections.ConfigDict(dict(
      backbone=f'vit_{variant or "s16"}', pooling='cls', base_image_size=224,
      layer_norm_epsilon=1e-6,
      drop_path_rate=0.1, projector_hidden_dim=2048,
      predictor_hidden_dim=2048, projection_dim=256, head_activation='gelu',
      head_gelu_approximate=False,
      dtype='bfloat16', bn_momentum=0.9, remat=False))
  return config
