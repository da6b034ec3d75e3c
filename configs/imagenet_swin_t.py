"""SMoG on ImageNet-1k with Swin-T: the reference recipe (spec table).

  python -m smog_jax.main --config configs/imagenet_swin_t.py \
      --workdir gs://BUCKET/smog_swin_t --config.data.data_dir=gs://BUCKET/tfds

400 epochs, global batch 4096, 2 x 224 px + 4 x 96 px crops per pipeline,
3 heads x 3000 groups of dimension 256, GELU heads, tau 0.1, AdamW (0.9,
0.999, eps 1e-8) with gradient-norm clipping at 3.0, lr warm-up 10 epochs
4e-5 -> 1e-3 then cosine to 4e-5, weight decay 0.05 (none on 1-D parameters,
biases and position tables), drop path 0.2 on the online network (0 on the
target), target EMA 0.999, group momentum 1.0 -> 0.99. Computes in bfloat16
(float32 parameters and SMoG math).
Expected linear top-1 (the paper): 77.5 % (linear-eval config
`configs/linear_eval.py:imagenet2012_swin_t`). Not yet reproduced by this
project.
"""

import ml_collections

from smog_jax import recipes


def get_config() -> ml_collections.ConfigDict:
  """The ImageNet Swin-T config."""
  # The reference's batch, length and grouping: the shared defaults.
  config = recipes.pretraining_config('imagenet2012')

  config.model = ml_collections.ConfigDict(dict(
      backbone='swin_t', drop_path_rate=0.2, projector_hidden_dim=2048,
      predictor_hidden_dim=2048, projection_dim=256, head_activation='gelu',
      head_gelu_approximate=False,
      dtype='bfloat16', bn_momentum=0.9, remat=False))

  config.optimizer = ml_collections.ConfigDict(dict(
      name='adamw', start_lr=4e-5, peak_lr=1e-3, end_lr=4e-5,
      warmup_epochs=10, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8,
      exclude_1d_from_decay=True, grad_clip_norm=3.0))

  return config
