"""Schedules are the documented pure functions of the step (hand values)."""

import math

import ml_collections
import numpy as np
import pytest

from smog_jax import schedules


def test_group_momentum_is_linear_from_one_to_099():
  total = 101
  assert schedules.linear_group_momentum(0, total) == pytest.approx(1.0)
  assert schedules.linear_group_momentum(50, total) == pytest.approx(0.995)
  assert schedules.linear_group_momentum(100, total) == pytest.approx(0.99)
  # Past the end it stays at the final value.
  assert schedules.linear_group_momentum(500, total) == pytest.approx(0.99)


def test_ema_momentum_constant_and_cosine():
  assert schedules.ema_momentum(7, 100, 0.999) == pytest.approx(0.999)
  assert schedules.ema_momentum(0, 100, 0.99, 'cosine') == pytest.approx(0.99)
  assert schedules.ema_momentum(50, 100, 0.99, 'cosine') == pytest.approx(
      0.995)
  assert schedules.ema_momentum(100, 100, 0.99, 'cosine') == pytest.approx(1.0)
  with pytest.raises(ValueError, match='EMA schedule'):
    schedules.ema_momentum(0, 10, 0.9, 'linear')


def test_learning_rate_warmup_then_cosine():
  opt = ml_collections.ConfigDict(dict(start_lr=0.01, peak_lr=4.8,
                                       end_lr=0.0048, warmup_epochs=10))
  lr = schedules.learning_rate(opt, total_steps=400 * 313, steps_per_epoch=313)
  warm = 3130
  assert float(lr(0)) == pytest.approx(0.01, rel=1e-4)  # float32
  assert float(lr(warm // 2)) == pytest.approx(0.01 + (4.8 - 0.01) / 2,
                                               rel=1e-3)
  assert float(lr(warm)) == pytest.approx(4.8)
  mid = warm + (400 * 313 - warm) // 2
  assert float(lr(mid)) == pytest.approx(0.0048 + (4.8 - 0.0048) / 2,
                                         rel=1e-3)
  assert float(lr(400 * 313)) == pytest.approx(0.0048)


def test_from_config_binds_the_smog_fields():
  config = ml_collections.ConfigDict(dict(
      optimizer=dict(start_lr=0.1, peak_lr=1.0, end_lr=0.0, warmup_epochs=1),
      smog=dict(ema_momentum=0.9, ema_schedule='constant',
                group_momentum_start=1.0, group_momentum_end=0.5)))
  s = schedules.from_config(config, total_steps=11, steps_per_epoch=5)
  assert float(s.group_momentum(10)) == pytest.approx(0.5)
  assert float(s.ema_momentum(3)) == pytest.approx(0.9)
  assert float(s.learning_rate(5)) == pytest.approx(1.0)
  np.testing.assert_allclose(float(s.learning_rate(11)), 0.0, atol=1e-7)
  assert not math.isnan(float(s.learning_rate(100)))
