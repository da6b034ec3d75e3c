"""Optimisers from `config.optimizer` (spec: "Reference recipe")."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

OPTIMIZERS = ('lars', 'adamw', 'sgd')


def _is_matrix(params: Any) -> Any:
  """True for kernels (ndim > 1); False for biases and BN scales/offsets."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt: ml_collections.ConfigDict,
                   learning_rate: optax.Schedule) -> optax.GradientTransformation:
  """LARS (SGD momentum + layer-wise trust ratio) or AdamW.

  Args:
    opt: `config.optimizer` with `name` in {'lars', 'adamw', 'sgd'},
      `weight_decay`, `momentum`, `trust_coefficient` (LARS), `b1`, `b2`,
      `eps` (AdamW), `grad_clip_norm` (0 = none) and `exclude_1d_from_decay`
      (no weight decay, and for LARS no trust ratio, on biases and BN params).
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
