"""A tiny SMoG network, optimiser, state and batch shared by the step tests."""

import dataclasses
import math

import jax
import ml_collections
import numpy as np

from smog_jax import augment, models, optim, schedules, train, train_state

NUM_HEADS, NUM_GROUPS, DIM = 3, 6, 8
LARGE, SMALL, CHANNELS = 8, 4, 1
TOTAL_STEPS = 20

# No photometric op and normalisation to [0, 1]: the step's input views are
# exactly `pixels(batch[...])`, so the re-derivations need no augmentation.
_PLAIN = augment.ColourParams(
    brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, jitter_prob=0.0,
    grayscale_prob=0.0, blur_prob=0.0, blur_sigma=(0.1, 2.0),
    solarize_prob=0.0)
IDENTITY = augment.AugmentSpec(pipelines=(_PLAIN, _PLAIN), mean=(0.0,),
                               std=(1.0,), channels=CHANNELS, seed=0)
# The reference's pipelines A and B (blur scaled to the tiny crops).
REFERENCE = augment.AugmentSpec(
    pipelines=(dataclasses.replace(_PLAIN, jitter_prob=0.8, blur_prob=1.0,
                                   blur_sigma=(0.1, 1.0)),
               dataclasses.replace(_PLAIN, jitter_prob=0.8, blur_prob=0.1,
                                   blur_sigma=(0.1, 1.0), solarize_prob=0.2)),
    mean=(0.3,), std=(0.35,), channels=CHANNELS, seed=1)


def pixels(images: np.ndarray) -> np.ndarray:
  """The float views of uint8 crops under `IDENTITY`."""
  return images.astype(np.float32) / 255.0


def tiny_config(**smog_overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      model=dict(backbone='resnet', stage_sizes=[1, 1], width=1 / 16,
                 stem='cifar', block='basic', dtype='float32',
                 bn_momentum=0.9, remat=False, zero_init_residual=True,
                 kernel_init='he_fan_out_normal', matmul_small_maps=True,
                 padding='symmetric', backbone_bn='per_resolution',
                 projector_hidden_dim=16, predictor_hidden_dim=16,
                 projection_dim=DIM, head_activation='relu'),
      # Plain SGD: on a 2-stage toy network LARS's trust ratio makes the
      # loss curve of a handful of steps too noisy to test.
      optimizer=dict(name='sgd', start_lr=0.05, peak_lr=0.05, end_lr=0.05,
                     warmup_epochs=0, weight_decay=1e-6, momentum=0.9,
                     exclude_1d_from_decay=False, grad_clip_norm=0.0),
      smog=dict(num_heads=NUM_HEADS, num_groups=NUM_GROUPS, temperature=0.1,
                ema_momentum=0.9, ema_schedule='constant',
                group_momentum_start=0.9, group_momentum_end=0.5,
                centroid_gradient=False),
  ))
  config.smog.update(smog_overrides)
  return config


def build(config=None, bank_rows=None, spec=IDENTITY):
  """(network, tx, step_config, state) for the tiny config."""
  config = config or tiny_config()
  network = models.build_network(config.model)
  sched = schedules.from_config(config, TOTAL_STEPS, steps_per_epoch=5)
  tx = optim.make_optimizer(config.optimizer, sched.learning_rate)
  step_config = train.StepConfig.of(config.smog, sched, spec)
  state = train_state.create_train_state(
      jax.random.PRNGKey(0), network, tx, (LARGE, LARGE, CHANNELS),
      NUM_HEADS, NUM_GROUPS, memory_bank_rows=bank_rows)
  return network, tx, step_config, state


def batch(batch_size=16, seed=0, num_examples=None):
  rng = np.random.default_rng(seed)
  img = lambda n, s: rng.integers(0, 256, (batch_size, n, s, s, CHANNELS),
                                  dtype=np.uint8)
  num_examples = num_examples or batch_size
  return dict(online_large=img(2, LARGE), online_small=img(4, SMALL),
              target_large=img(2, LARGE),
              index=rng.permutation(num_examples)[:batch_size].astype(np.int32),
              epoch=np.full(batch_size, seed % 3, np.int32),
              label=np.zeros(batch_size, np.int32))


def gelu_exact(x: np.ndarray) -> np.ndarray:
  """PyTorch's `nn.GELU()`: x Phi(x), by `math.erf`."""
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
  """The tanh approximation of GELU (Flax's `nn.gelu` default)."""
  inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
  return 0.5 * x * (1.0 + np.tanh(inner))


def predictor_output(model_config, seed=0):
  """(the predictor of `build_network(model_config)` on random inputs in
  evaluation mode, its NumPy re-derivation as a function of the activation).
  """
  head = models.build_network(model_config).predictor
  x = np.random.default_rng(seed).normal(0.0, 3.0, (8, DIM)).astype(np.float32)
  variables = head.init(jax.random.PRNGKey(seed), x, train=False)
  p = jax.tree.map(np.float64, variables['params'])
  stats = jax.tree.map(np.float64, variables['batch_stats']['BatchNorm_0'])
  h = x @ p['Dense_0']['kernel'] + p['Dense_0']['bias']
  h = (h - stats['mean']) / np.sqrt(stats['var'] + 1e-5)
  h = h * p['BatchNorm_0']['scale'] + p['BatchNorm_0']['bias']
  out = p['Dense_1']
  re_derived = lambda act: act(h) @ out['kernel'] + out['bias']
  return np.asarray(head.apply(variables, x, train=False)), re_derived
