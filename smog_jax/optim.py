"""Optimisers from `config.optimizer` (spec: "Reference recipe")."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from smog_jax.models.transformer import NO_WEIGHT_DECAY

# The `config.optimizer` fields each optimiser reads, beside `name` and the
# schedule's; the config sets every one (`validation` names a missing one).
COMMON_FIELDS = ('weight_decay', 'exclude_1d_from_decay', 'grad_clip_norm')
OPTIMIZER_FIELDS = {
    'lars': COMMON_FIELDS + ('momentum', 'trust_coefficient'),
    'adamw': COMMON_FIELDS + ('b1', 'b2', 'eps'),
    'sgd': COMMON_FIELDS + ('momentum',),
}
OPTIMIZERS = tuple(OPTIMIZER_FIELDS)


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
    opt: `config.optimizer` with `name` in `OPTIMIZERS` and the fields
      `OPTIMIZER_FIELDS[name]`: `weight_decay`, `momentum`,
      `trust_coefficient` (LARS), `b1`, `b2`, `eps` (AdamW),
      `grad_clip_norm` (0 = none) and `exclude_1d_from_decay` (no weight
      decay, and for LARS no trust ratio, on biases, norms and position
      tables).
    learning_rate: the schedule.

  Returns:
    The optax transformation.
  """
  mask = _is_matrix if opt.exclude_1d_from_decay else True
  if opt.name == 'lars':
    # The reference wraps SGD(momentum 0.9) in LARS with trust 0.001, no
    # clipping of the trust ratio.
    tx = optax.lars(learning_rate, weight_decay=opt.weight_decay,
                    weight_decay_mask=mask,
                    trust_coefficient=opt.trust_coefficient,
                    trust_ratio_mask=mask, momentum=opt.momentum)
  elif opt.name == 'adamw':
    tx = optax.adamw(learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                     weight_decay=opt.weight_decay, mask=mask)
  elif opt.name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask),
                     optax.sgd(learning_rate, momentum=opt.momentum))
  else:
    raise ValueError(f'Unknown optimizer {opt.name!r}; use one of '
                     f'{OPTIMIZERS}.')
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx
