"""A tiny SMoG network, optimiser, state and batch shared by the step tests."""

import jax
import ml_collections
import numpy as np

from smog_jax import models, optim, schedules, train, train_state

NUM_HEADS, NUM_GROUPS, DIM = 3, 6, 8
LARGE, SMALL, CHANNELS = 8, 4, 1
TOTAL_STEPS = 20


def tiny_config(**smog_overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      model=dict(backbone='resnet', stage_sizes=[1, 1], width=1 / 16,
                 stem='cifar',
                 projector_hidden_dim=16, predictor_hidden_dim=16,
                 projection_dim=DIM),
      # Plain SGD: on a 2-stage toy network LARS's trust ratio makes the
      # loss curve of a handful of steps too noisy to test.
      optimizer=dict(name='sgd', start_lr=0.05, peak_lr=0.05, end_lr=0.05,
                     warmup_epochs=0, weight_decay=1e-6, momentum=0.9),
      smog=dict(num_heads=NUM_HEADS, num_groups=NUM_GROUPS, temperature=0.1,
                ema_momentum=0.9, ema_schedule='constant',
                group_momentum_start=0.9, group_momentum_end=0.5,
                centroid_gradient=False),
  ))
  config.smog.update(smog_overrides)
  return config


def build(config=None, bank_rows=None):
  """(network, tx, step_config, state) for the tiny config."""
  config = config or tiny_config()
  network = models.build_network(config.model)
  sched = schedules.from_config(config, TOTAL_STEPS, steps_per_epoch=5)
  tx = optim.make_optimizer(config.optimizer, sched.learning_rate)
  step_config = train.StepConfig(
      schedules=sched, temperature=config.smog.temperature,
      centroid_gradient=config.smog.centroid_gradient)
  state = train_state.create_train_state(
      jax.random.PRNGKey(0), network, tx, (LARGE, LARGE, CHANNELS),
      NUM_HEADS, NUM_GROUPS, memory_bank_rows=bank_rows)
  return network, tx, step_config, state


def batch(batch_size=16, seed=0, num_examples=None):
  rng = np.random.default_rng(seed)
  img = lambda n, s: rng.normal(size=(batch_size, n, s, s, CHANNELS)).astype(
      np.float32)
  num_examples = num_examples or batch_size
  return dict(online_large=img(2, LARGE), online_small=img(4, SMALL),
              target_large=img(2, LARGE),
              index=rng.permutation(num_examples)[:batch_size].astype(np.int32),
              label=np.zeros(batch_size, np.int32))
