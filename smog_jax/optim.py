"""Optimisers from `config.optimizer` (spec: "Reference recipe")."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from smog_jax.models.transformer import NO_WEIGHT_DECAY

OPTIMIZERS = ('lars', 'adamw', 'sgd')


def _is_matrix(params: Any) -> Any:
  """True for weight matrices and kernels; False for 1-D parameters (biases,
  BN and LayerNorm scales/offsets) and position tables (ViT, Swin)."""
  def decayed(path, p):
    return p.ndim > 1 and getattr(path[-1], 'key', None) not in NO_WEIGHT_DECAY
  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(opt: ml_collections.ConfigDict,
                   learning_rate: optax.Schedule) -> optax.GradientTransformation:
  """LARS (SGD momentum + layer-wise trust ratio) or AdamW.

  Args:
    opt: `config.optimizer` with `name` in {'lars', 'adamw', 'sgd'},
      `weight_decay`, `momentum`, `trust_coefficient` (LARS), `b1`, `b2`,
      `eps` (AdamW), `grad_clip_norm` (0 = none) and `exclude_1d_from_decay`
      (no weight decay, and for LARS no trust ratio, on biases, norms and
      position tables).
    learning_rate: the schedule.

  Returns:
    The optax transformation.
  """
  mask = _is_matrix if opt.get('exclude_1d_from_decay', False) else True
  if opt.name == 'lars':
    # The reference wraps SGD(momentum 0.9) in LARS with trust 0.001, no
    # clipping of the trust ratio.
    tx = optax.lars(learning_rate, weight_decay=opt.weight_decay,
                    weight_decay_mask=mask, trust_coefficient=opt.get(
                        'trust_coefficient', 0.001),
                    trust_ratio_mask=mask, momentum=opt.get('momentum', 0.9))
  elif opt.name == 'adamw':
    tx = optax.adamw(learning_rate, b1=opt.get('b1', 0.9),
                     b2=opt.get('b2', 0.999), eps=opt.get('eps', 1e-8),
                     weight_decay=opt.weight_decay, mask=mask)
  elif opt.name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask),
                     optax.sgd(learning_rate, momentum=opt.get('momentum', 0.9)))
  else:
    raise ValueError(f'Unknown optimizer {opt.name!r}; use one of '
                     f'{OPTIMIZERS}.')
  clip = opt.get('grad_clip_norm', 0.0)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx
