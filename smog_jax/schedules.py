"""Every per-step hyper-parameter as a pure function of the step.

Pure functions of the step (not state) make a resumed run reproduce an
uninterrupted one exactly, and let the train step log the values it used.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

Schedule = Callable[[jax.Array | int], jax.Array]


def linear_group_momentum(step: jax.Array | int, total_steps: int,
                          start: float = 1.0, end: float = 0.99) -> jax.Array:
  """beta: linear per step from `start` at step 0 to `end` at the last step."""
  last = max(total_steps - 1, 1)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / last, 0.0, 1.0)
  return start + (end - start) * frac


def ema_momentum(step: jax.Array | int, total_steps: int, base: float = 0.999,
                 kind: str = 'constant') -> jax.Array:
  """Target-network EMA momentum.

  'constant' is the reference (0.999 every step); 'cosine' is BYOL's
  1 - (1 - base) * (cos(pi * step / total_steps) + 1) / 2, rising to 1.
  """
  step = jnp.asarray(step, jnp.float32)
  if kind == 'constant':
    return jnp.full((), base, jnp.float32)
  if kind == 'cosine':
    frac = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * frac) + 1.0) / 2.0
  raise ValueError(f"Unknown EMA schedule {kind!r}; use 'constant' or 'cosine'.")


def learning_rate(opt: ml_collections.ConfigDict, total_steps: int,
                  steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from `start_lr` to `peak_lr`, cosine to `end_lr`."""
  warmup = int(round(opt.warmup_epochs * steps_per_epoch))
  warmup = min(warmup, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=opt.start_lr, peak_value=opt.peak_lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=opt.end_lr)


@dataclasses.dataclass(frozen=True)
class Schedules:
  """The three schedules a train step evaluates at its step."""
  learning_rate: Schedule
  ema_momentum: Schedule
  group_momentum: Schedule


def from_config(config: ml_collections.ConfigDict, total_steps: int,
                steps_per_epoch: int) -> Schedules:
  """Builds the schedules of `config.optimizer` and `config.smog`."""
  smog = config.smog
  return Schedules(
      learning_rate=learning_rate(config.optimizer, total_steps,
                                  steps_per_epoch),
      ema_momentum=lambda s: ema_momentum(s, total_steps, smog.ema_momentum,
                                          smog.ema_schedule),
      group_momentum=lambda s: linear_group_momentum(
          s, total_steps, smog.group_momentum_start, smog.group_momentum_end),
  )
