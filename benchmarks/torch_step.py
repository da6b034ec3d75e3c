"""Times our jitted SMoG train step against a PyTorch eager one, alternating.

The PyTorch step is a reference of `smog_jax.train.train_step` for a ResNet
config (the default `configs/fashion_mnist.py`): the same network (stem,
blocks, 1x1 projection shortcuts, PyTorch's k // 2 padding, no conv bias, BN
momentum and epsilon, projector Linear-BN-act-Linear-BN(affine=False),
predictor Linear-BN-act-Linear), loaded with our initial parameters, batch
statistics and centroids (the strict key and shape match is the check that
the two networks are one); the same device augmentation as
smog_jax/augment.py on the same uint8 crops (colour jitter in a random order
per crop, grey, Gaussian blur, solarize, normalise; flips are the host's,
already in the crops; random numbers from a torch generator, not JAX's
keys; like the vmapped JAX, every op runs on every crop and a mask picks);
the target forward in train-mode BN
without gradient; per head the targets from the old centroids, the momentum
update of the centroids from online large crop h mod n_large, the
cross-entropy against the new centroids / tau; LARS as optax's (weight
decay, trust ratio, -lr, momentum trace; the same masks); the EMA of the
target; and the step's monitoring metrics. It runs eagerly in float32
(ours in the config's `model.dtype`; `--check` needs float32),
channels_last, on `torch.get_num_threads()` threads (`--threads`, default:
every core this process may use).

Both steps run in one process, set up as `smog_jax.main` sets itself up
(`startup.start_process`: XLA:CPU's flag and glibc's malloc settings, which
the PyTorch step's allocations share), on the same synthetic uint8 crops
(no data set needed), and are timed in alternating rounds (`--rounds`, the
order swapped every round) of `--steps` steps each after two warm-up steps
(compilation excluded). Printed per framework: the median and best
milliseconds per step over the rounds, images per second (an image is one
of the config's `batch_size` examples a step; each brings 2 x
`num_large_crops` crops) and the ratio ours / PyTorch of the time per step.
`--no_augment` times both with the views only normalised.

  python3 benchmarks/torch_step.py --config configs/fashion_mnist.py
  python3 benchmarks/torch_step.py --config configs/fashion_mnist.py \
      --steps 10 --rounds 5 --no_augment
  python3 benchmarks/torch_step.py --config configs/fashion_mnist.py --check

`--check` times nothing: from the same state and crops it runs two steps of
each without the augmentation and compares loss, centroids, parameter
updates (LARS's momentum traces), EMA target, BN statistics and metrics
(the first step's updates agree to ~1e-6, later ones to ~1e-3: PyTorch's
float32 gradients stray, a float64 run of the same PyTorch step agreeing
with ours to ~1e-4); then both augmentations on the same crops given the
same uniforms (ours, from JAX's keys); then three steps of each with the
augmentation, printing their losses (random numbers differ: close, not
equal).

Flags `--config`, `--steps`, `--rounds` and `--profile` are
benchmarks/train_step.py's (imported); here `--profile` prints PyTorch's step
per operator (torch.profiler) instead of timing both; ours is
`benchmarks/train_step.py --profile`. PyTorch is not a project
requirement: `pip install torch --index-url
https://download.pytorch.org/whl/cpu`. Not mirrored: ResNet configs with
small crops, `remat`, 'same' padding, or a non-LARS optimiser (the
script says so and stops); BN running variances (PyTorch's unbiased, Flax's
biased: a relative 1 / (N - 1) in the running statistics only). Neither
step writes a memory bank (benchmarks/train_step.py's state has none).
"""

from __future__ import annotations

import collections
import math
import os
import statistics
import time

import jax
import numpy as np
import optax
from absl import app, flags

import machine
import train_step as jax_bench  # Defines --config, --steps, --rounds.
from smog_jax import augment, schedules, startup
from smog_jax import train
from smog_jax import train_state
from smog_jax.models import resnet as resnet_lib
from smog_jax.random_streams import Stream

_CHECK = flags.DEFINE_bool('check', False, 'Compare the two steps from one '
                           'state instead of timing them.')
_NO_AUGMENT = flags.DEFINE_bool('no_augment', False, 'Time both steps with '
                                'the views only normalised.')
_THREADS = flags.DEFINE_integer('threads', 0, "PyTorch's threads; 0: every "
                                'core this process may use.')

_INSTALL = 'pip install torch --index-url https://download.pytorch.org/whl/cpu'
_WARMUP_STEPS = 2
# `--profile`: PyTorch's operators shown, by their own time.
_PROFILE_ROWS = 15
# `--check`: steps compared without the augmentation, then run with it.
_CHECK_PLAIN_STEPS, _CHECK_AUGMENTED_STEPS = 2, 3
# `--check` tolerances, relative (float32 sums in another order).
_CHECK_TOLERANCE = dict(loss=1e-5, centroids=1e-5, updates=1e-2, target=1e-6,
                        running_mean=1e-3, augmentation=1e-4)
# `--check`: examples whose crops both augmentations get the same uniforms.
_CHECK_AUGMENTED_EXAMPLES = 16

# Set by `_import_torch` when the script runs: not a project requirement.
torch = None
F = None

# Our augmentation's layout of a crop's uniform draws (smog_jax/augment.py).
# pylint: disable=protected-access
_JITTER, _FACTORS, _ORDER, _GREY, _BLUR, _SIGMA, _SOLARIZE, _NUM_DRAWS = (
    augment._JITTER, augment._FACTORS, augment._ORDER, augment._GREY,
    augment._BLUR, augment._SIGMA, augment._SOLARIZE, augment._NUM_DRAWS)
# pylint: enable=protected-access

# Flax leaf name -> PyTorch's, in the state dict of the mirrored module.
_LEAF_NAMES = dict(kernel='weight', scale='weight', bias='bias',
                   mean='running_mean', var='running_var')


def _import_torch() -> None:
  """Imports PyTorch into this module, or stops with how to install it."""
  global torch, F
  try:
    import torch as torch_module  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise SystemExit('benchmarks/torch_step.py needs PyTorch, which is not a '
                     f'project requirement: {_INSTALL}') from error
  torch = torch_module
  F = torch.nn.functional


def _check_supported(config) -> None:
  """Stops on a config whose step the PyTorch reference does not mirror."""
  model = config.model
  problems = []
  if not model.backbone.startswith('resnet'):
    problems.append(f'backbone {model.backbone!r} (ResNets only)')
  else:
    if model.padding != 'symmetric':
      problems.append(f"padding {model.padding!r} (only 'symmetric')")
    if model.remat:
      problems.append('remat')
  if _CHECK.value and model.dtype != 'float32':
    problems.append(f'dtype {model.dtype!r} under --check (which compares '
                    'float32 steps)')
  if config.data.num_small_crops:
    problems.append('small crops (data.num_small_crops must be 0)')
  if config.optimizer.name != 'lars':
    problems.append(f'optimizer {config.optimizer.name!r} (LARS only)')
  if problems:
    raise app.UsageError('The PyTorch reference does not mirror: ' +
                         '; '.join(problems) + '.')


# The PyTorch network: modules named as Flax names ours, so that a parameter's
# path in our tree is its key in the module's state dict.


def _resnet_plan(model) -> tuple[tuple[int, ...], str]:
  """Stage sizes and block kind ('basic' or 'bottleneck') of `model`."""
  if model.backbone == 'resnet':
    return tuple(model.stage_sizes), model.block
  stage_sizes, block_cls = resnet_lib.RESNET_DEPTHS[int(model.backbone[6:])]
  return stage_sizes, ('basic' if block_cls is resnet_lib.BasicBlock
                       else 'bottleneck')


def _torch_backbone(model, in_channels: int):
  """The ResNet trunk as a `ModuleDict` (stem, then blocks in order)."""
  nn = torch.nn
  bn = lambda c: nn.BatchNorm2d(c, eps=1e-5, momentum=1.0 - model.bn_momentum)
  conv = lambda c_in, c_out, k, stride=1: nn.Conv2d(
      c_in, c_out, k, stride, padding=k // 2, bias=False)
  stems = dict(imagenet=(7, 2), cifar=(3, 1), cifar_stride2=(3, 2))
  base = max(1, round(64 * model.width))
  net = nn.ModuleDict(dict(
      conv_init=conv(in_channels, base, *stems[model.stem]),
      bn_init=bn(base)))
  stage_sizes, block = _resnet_plan(model)
  expansion = 1 if block == 'basic' else 4
  name = 'BasicBlock' if block == 'basic' else 'BottleneckBlock'
  channels, index = base, 0
  for i, num_blocks in enumerate(stage_sizes):
    filters = base * 2**i
    for j in range(num_blocks):
      stride = 2 if i > 0 and j == 0 else 1
      if block == 'basic':
        convs = [(channels, filters, 3, stride), (filters, filters, 3, 1)]
      else:
        convs = [(channels, filters, 1, 1), (filters, filters, 3, stride),
                 (filters, filters * expansion, 1, 1)]
      layers = {}
      for m, (c_in, c_out, k, s) in enumerate(convs):
        layers[f'Conv_{m}'] = conv(c_in, c_out, k, s)
        layers[f'BatchNorm_{m}'] = bn(c_out)
      if stride != 1 or channels != filters * expansion:
        layers['conv_proj'] = conv(channels, filters * expansion, 1, stride)
        layers['norm_proj'] = bn(filters * expansion)
      net[f'{name}_{index}'] = nn.ModuleDict(layers)
      channels, index = filters * expansion, index + 1
  return net


def _block_forward(block, x):
  """A residual block, torchvision's way (ReLUs and the sum in place)."""
  num_convs = sum(name.startswith('Conv_') for name in block)
  y = x
  for m in range(num_convs):
    y = block[f'BatchNorm_{m}'](block[f'Conv_{m}'](y))
    if m < num_convs - 1:
      y = F.relu(y, inplace=True)
  residual = (block['norm_proj'](block['conv_proj'](x)) if 'conv_proj' in block
              else x)
  y += residual
  return F.relu(y, inplace=True)


def _backbone_forward(net, x, stem: str):
  """Pooled features `[N, F]` of images `[N, C, H, W]`."""
  x = F.relu(net['bn_init'](net['conv_init'](x)), inplace=True)
  if stem == 'imagenet':
    x = F.max_pool2d(x, 3, 2, 1)
  for name, block in net.items():
    if name not in ('conv_init', 'bn_init'):
      x = _block_forward(block, x)
  return x.mean(dim=(2, 3))


def _torch_head(model, in_dim: int, hidden: int, output_norm: bool):
  """Linear - BN - act - Linear [- BN without scale and bias]."""
  nn = torch.nn
  momentum = 1.0 - model.bn_momentum
  if model.head_activation == 'relu':
    act = nn.ReLU(inplace=True)
  else:
    act = nn.GELU(approximate='tanh' if model.head_gelu_approximate
                  else 'none')
  layers = collections.OrderedDict(
      Dense_0=nn.Linear(in_dim, hidden),
      BatchNorm_0=nn.BatchNorm1d(hidden, eps=1e-5, momentum=momentum),
      act=act,
      Dense_1=nn.Linear(hidden, model.projection_dim))
  if output_norm:
    layers['BatchNorm_1'] = nn.BatchNorm1d(
        model.projection_dim, eps=1e-5, momentum=momentum, affine=False)
  return nn.Sequential(layers)


def torch_network(model, in_channels: int, with_predictor: bool):
  """Backbone, projector [and predictor], as our `SMoGNetwork`.

  Args:
    model: `config.model` of a ResNet.
    in_channels: channels of the views.
    with_predictor: the online network (True) or the target (False).

  Returns:
    A `ModuleDict` in train mode, channels_last, float32.
  """
  backbone = _torch_backbone(model, in_channels)
  stage_sizes, block = _resnet_plan(model)
  features = (max(1, round(64 * model.width)) * 2**(len(stage_sizes) - 1) *
              (1 if block == 'basic' else 4))
  modules = dict(backbone=backbone, projector=_torch_head(
      model, features, model.projector_hidden_dim, output_norm=True))
  if with_predictor:
    modules['predictor'] = _torch_head(model, model.projection_dim,
                                       model.predictor_hidden_dim,
                                       output_norm=False)
  net = torch.nn.ModuleDict(modules)
  return net.to(memory_format=torch.channels_last).train()


def torch_layout(tree) -> dict[str, np.ndarray]:
  """Our params or batch stats as PyTorch state-dict entries.

  Conv kernels HWIO -> OIHW, Dense kernels `[in, out]` -> `[out, in]`.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [p.key for p in path]
    value = np.array(leaf, np.float32)
    if names[-1] == 'kernel':
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    out['.'.join(names[:-1] + [_LEAF_NAMES[names[-1]]])] = value
  return out


def _torch_entries(net) -> dict[str, object]:
  """A module's parameters and running statistics, by state-dict key."""
  entries = dict(net.named_parameters())
  entries.update((k, v) for k, v in net.named_buffers()
                 if k.endswith(('running_mean', 'running_var')))
  return entries


def load_flax(net, params, batch_stats) -> None:
  """Copies our `params` and `batch_stats` into `net`, every key and shape
  matched both ways (the check that the two networks are one)."""
  want = {**torch_layout(params), **torch_layout(batch_stats)}
  have = _torch_entries(net)
  if want.keys() != have.keys():
    raise ValueError('The PyTorch network differs from ours: only ours has '
                     f'{sorted(want.keys() - have.keys())}, only PyTorch\'s '
                     f'{sorted(have.keys() - want.keys())}.')
  with torch.no_grad():
    for key, value in want.items():
      if tuple(have[key].shape) != value.shape:
        raise ValueError(f'{key}: ours {value.shape}, PyTorch\'s '
                         f'{tuple(have[key].shape)}.')
      have[key].copy_(torch.from_numpy(value))


def torch_state(net) -> dict[str, np.ndarray]:
  """`_torch_entries` as NumPy copies."""
  return {k: v.detach().numpy().copy() for k, v in _torch_entries(net).items()}


# The device augmentation of smog_jax/augment.py in torch ops, on a batch of
# crops `[N, C, H, W]` at once; per-crop values are `[N, 1, 1, 1]`. As the
# vmapped JAX (whose `lax.switch` and `where`s compute every branch), every
# op runs on every crop and a mask picks its result.


def _column(values):
  return values.reshape(-1, 1, 1, 1)


def _grey(x):
  """ITU-R 601-2 luma `[N, 1, H, W]` (the image itself when one channel)."""
  if x.shape[1] == 1:
    return x
  weights = torch.tensor(augment.LUMA_WEIGHTS).reshape(1, 3, 1, 1)
  return (x * weights).sum(dim=1, keepdim=True)


def _rgb_to_hsv(x):
  r, g, b = x[:, 0], x[:, 1], x[:, 2]
  value = x.amax(dim=1)
  chroma = value - x.amin(dim=1)
  safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
  hue = torch.where(value == r, (g - b) / safe,
                    torch.where(value == g, 2.0 + (b - r) / safe,
                                4.0 + (r - g) / safe))
  hue = torch.where(chroma > 0, torch.remainder(hue / 6.0, 1.0),
                    torch.zeros_like(hue))
  saturation = torch.where(
      value > 0, chroma / torch.where(value > 0, value,
                                      torch.ones_like(value)),
      torch.zeros_like(value))
  return hue, saturation, value


def _hsv_to_rgb(hue, saturation, value):
  offsets = torch.tensor([5.0, 3.0, 1.0]).reshape(1, 3, 1, 1)
  k = torch.remainder(offsets + 6.0 * hue[:, None], 6.0)
  ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
  return value[:, None] * (1.0 - saturation[:, None] * ramp)


def _adjust_hue(x, delta):
  hue, saturation, value = _rgb_to_hsv(x)
  hue = torch.remainder(hue + delta.reshape(-1, 1, 1), 1.0)
  return torch.clamp(_hsv_to_rgb(hue, saturation, value), 0.0, 1.0)


def _colour_jitter(x, draws, p: augment.ColourParams):
  """Brightness, contrast [, saturation, hue] in a random order per crop."""
  f = 2.0 * draws[:, _FACTORS] - 1.0
  ops = [
      lambda y: torch.clamp(y * _column(1.0 + p.brightness * f[:, 0]), 0, 1),
      lambda y: (lambda mean: torch.clamp(
          mean + _column(1.0 + p.contrast * f[:, 1]) * (y - mean), 0, 1))(
              _grey(y).mean(dim=(1, 2, 3), keepdim=True)),
      lambda y: (lambda grey: torch.clamp(
          grey + _column(1.0 + p.saturation * f[:, 2]) * (y - grey), 0, 1))(
              _grey(y)),
      lambda y: _adjust_hue(y, p.hue * f[:, 3]),
  ]
  if x.shape[1] == 1:
    ops = ops[:2]
  order = torch.argsort(draws[:, _ORDER][:, :len(ops)], dim=1)
  for slot in range(len(ops)):
    outputs = [op(x) for op in ops]
    x = outputs[0]
    for k in range(1, len(ops)):
      x = torch.where(_column(order[:, slot] == k), outputs[k], x)
  return x


def _gaussian_blur(x, sigma, max_sigma: float):
  """Separable blur, each crop its own sigma, edge pixels repeated."""
  radius = max(1, math.ceil(3.0 * max_sigma))
  taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
  weights = torch.exp(-0.5 * torch.square(taps[None] / sigma[:, None]))
  weights = weights / weights.sum(dim=1, keepdim=True)
  n, c, h, w = x.shape
  weights = weights.repeat_interleave(c, dim=0)  # [N * C, taps]
  y = F.pad(x.reshape(1, n * c, h, w), (radius,) * 4, mode='replicate')
  y = F.conv2d(y, weights[:, None, None, :], groups=n * c)
  y = F.conv2d(y, weights[:, None, :, None], groups=n * c)
  return y.reshape(n, c, h, w).contiguous(memory_format=torch.channels_last)


def _unit_float(crops, channels: int):
  """uint8 `[N, H, W, C_src]` -> float `[N, channels, H, W]` in [0, 1]."""
  x = crops.permute(0, 3, 1, 2).float() * (1.0 / 255.0)  # channels_last
  if x.shape[1] == channels:
    return x
  if x.shape[1] == 1 and channels == 3:
    return x.expand(-1, 3, -1, -1).contiguous(
        memory_format=torch.channels_last)
  return _grey(x)


def _normalise(x, spec: augment.AugmentSpec):
  mean = torch.tensor(spec.mean).reshape(1, -1, 1, 1)
  std = torch.tensor(spec.std).reshape(1, -1, 1, 1)
  return (x - mean) / std


def torch_views(crops, spec: augment.AugmentSpec, pipeline: int, draws):
  """`augment.augment_crop` on every crop of `crops [N, H, W, C_src]`.

  Args:
    crops: uint8 crops of one pipeline, example-major.
    spec: our augmentation settings.
    pipeline: 0 (A) or 1 (B).
    draws: `[N, _NUM_DRAWS]` uniforms, laid out as ours.

  Returns:
    Normalised float32 `[N, C, H, W]`, channels_last.
  """
  p = spec.pipelines[pipeline]
  x = _unit_float(crops, spec.channels)
  x = torch.where(_column(draws[:, _JITTER] < p.jitter_prob),
                  _colour_jitter(x, draws, p), x)
  if spec.channels == 3:
    x = torch.where(_column(draws[:, _GREY] < p.grayscale_prob),
                    _grey(x).expand_as(x), x)
  if max(q.blur_prob for q in spec.pipelines) > 0:
    max_sigma = max(q.blur_sigma[1] for q in spec.pipelines)
    sigma = p.blur_sigma[0] + (p.blur_sigma[1] - p.blur_sigma[0]) * (
        draws[:, _SIGMA])
    x = torch.where(_column(draws[:, _BLUR] < p.blur_prob),
                    _gaussian_blur(x, sigma, max_sigma), x)
  x = torch.where(_column(draws[:, _SOLARIZE] < p.solarize_prob),
                  torch.where(x >= 0.5, 1.0 - x, x), x)
  return _normalise(x, spec)


def _schedule_tables(sched: schedules.Schedules) -> dict[str, np.ndarray]:
  """Our schedules' values at steps 0 .. total (constant after)."""
  steps = np.arange(jax_bench.TOTAL_STEPS + 1)
  return {name: np.broadcast_to(np.asarray(
      getattr(sched, name)(steps), np.float64), steps.shape)
          for name in ('learning_rate', 'ema_momentum', 'group_momentum')}


def _normalize(x):
  return F.normalize(x, dim=-1, eps=1e-12)


def _assign(features, centroids):
  """`[H, N]` argmax groups of `features [H or 1, N, D]`, `centroids [H, K, D]`
  (ties to the lowest index, as ours)."""
  return torch.argmax(features @ centroids.transpose(1, 2), dim=-1)


class TorchStep:
  """The SMoG train step in PyTorch eager mode, state and all.

  Attributes:
    online, target: the two networks (train mode).
    centroids: `[H, K, D]` group features.
    step: steps taken; picks the schedules' values and the pipelines.
    photometric: run the augmentation (False: the views only normalised).
  """

  def __init__(self, config, spec: augment.AugmentSpec,
               sched: schedules.Schedules, init: train_state.TrainState,
               photometric: bool = True):
    """From `init`, a host copy of our initial state (`_host_copy`)."""
    self.config, self.spec, self.photometric = config, spec, photometric
    self.tables = _schedule_tables(sched)
    model = config.model
    self.online = torch_network(model, spec.channels, with_predictor=True)
    self.target = torch_network(model, spec.channels, with_predictor=False)
    load_flax(self.online, init.params, init.batch_stats)
    load_flax(self.target, init.target_params, init.target_batch_stats)
    self.target.requires_grad_(False)  # Updated by the EMA only.
    self.centroids = torch.from_numpy(np.array(init.centroids))
    self.step = int(init.step)
    self.generator = torch.Generator().manual_seed(spec.seed)
    self.params = list(self.online.parameters())
    self.momentum = [torch.zeros_like(p) for p in self.params]
    opt = config.optimizer
    # Our mask (`optim._is_matrix`): with exclude_1d_from_decay, only
    # matrices and kernels get weight decay and the trust ratio.
    self.decayed = [p.ndim > 1 or not opt.exclude_1d_from_decay
                    for p in self.params]
    online = dict(self.online.named_parameters())
    pairs = [(p, online[k]) for k, p in self.target.named_parameters()]
    self.target_params, self.online_subset = map(list, zip(*pairs))

  def _schedule(self, name: str) -> float:
    table = self.tables[name]
    return float(table[min(self.step, len(table) - 1)])

  def _views(self, batch: dict[str, object], pipeline: int, key: str):
    crops = batch[key]
    crops = crops.reshape((-1,) + tuple(crops.shape[2:]))  # example-major
    if not self.photometric:
      return _normalise(_unit_float(crops, self.spec.channels), self.spec)
    draws = torch.rand(crops.shape[0], _NUM_DRAWS, generator=self.generator)
    return torch_views(crops, self.spec, pipeline, draws)

  def __call__(self, batch: dict[str, object]) -> dict[str, object]:
    """One step on uint8 `online_large`, `target_large` `[B, nL, S, S, C]`.

    Returns:
      Our step's metrics (0-d tensors).
    """
    smog, opt = self.config.smog, self.config.optimizer
    stem = self.config.model.stem
    batch_size, num_large = batch['online_large'].shape[:2]
    num_heads, num_groups, dim = self.centroids.shape
    online_pipeline = self.step % 2  # Pipelines swap every step.
    online_x = self._views(batch, online_pipeline, 'online_large')
    target_x = self._views(batch, 1 - online_pipeline, 'target_large')
    split = lambda x: x.reshape(batch_size, -1, dim).transpose(0, 1)
    old = self.centroids

    # 1. Targets: target network (train-mode BN), old centroids.
    with torch.no_grad():
      target_z = _normalize(self.target['projector'](_backbone_forward(
          self.target['backbone'], target_x, stem)))
      targets = _assign(target_z[None], old)  # [H, B * T], example-major
      targets = targets.reshape(num_heads, batch_size, num_large).transpose(
          1, 2)  # [H, T, B]

    # Online branch: backbone, then the heads over all crops at once.
    projection = self.online['projector'](_backbone_forward(
        self.online['backbone'], online_x, stem))
    prediction = self.online['predictor'](projection)
    p = split(_normalize(prediction))  # [V, B, D]
    z_large = split(_normalize(projection))[:num_large]

    # 2. Momentum grouping from large crop h mod nL, old assignments.
    z_update = z_large[torch.arange(num_heads) % num_large]  # [H, B, D]
    if not smog.centroid_gradient:
      z_update = z_update.detach()
    assignments = _assign(z_update.detach(), old)  # [H, B]
    flat = (assignments + num_groups * torch.arange(num_heads)[:, None]
            ).reshape(-1)
    sums = torch.zeros(num_heads * num_groups, dim).index_add(
        0, flat, z_update.reshape(-1, dim))
    counts = torch.bincount(flat, minlength=num_heads * num_groups).float()
    means = torch.where(counts[:, None] > 0,
                        sums / counts.clamp(min=1)[:, None],
                        old.reshape(-1, dim))
    beta = self._schedule('group_momentum')
    new = _normalize(beta * old.reshape(-1, dim) + (1 - beta) * means
                     ).reshape(num_heads, num_groups, dim)

    # 3. Cross-entropy against the new centroids, all V x T crop pairs.
    logits = torch.einsum('vbd,hkd->hvbk', p, new) / smog.temperature
    log_probs = F.log_softmax(logits, dim=-1)  # [H, V, B, K]
    index = targets.transpose(1, 2)[:, None].expand(
        -1, p.shape[0], -1, -1)  # [H, V, B, T]
    loss = -torch.gather(log_probs, 3, index).mean()

    # 4. LARS on the online network, then the EMA of the target.
    for param in self.params:
      param.grad = None
    loss.backward()
    grads = [param.grad for param in self.params]
    grad_norm = torch.linalg.vector_norm(torch.stack(
        torch._foreach_norm(grads)))  # pylint: disable=protected-access
    lr = self._schedule('learning_rate')
    with torch.no_grad():
      if opt.grad_clip_norm:
        scale = torch.clamp(opt.grad_clip_norm / grad_norm, max=1.0)
        grads = [g * scale for g in grads]
      for param, grad, buffer, decayed in zip(self.params, grads,
                                              self.momentum, self.decayed):
        if decayed:
          grad = grad + opt.weight_decay * param
          param_norm = torch.linalg.vector_norm(param)
          update_norm = torch.linalg.vector_norm(grad)
          ratio = torch.where(
              (param_norm == 0) | (update_norm == 0), 1.0,
              opt.trust_coefficient * param_norm / update_norm)
          grad = grad * ratio
        buffer.mul_(opt.momentum).add_(grad, alpha=-lr)
        param.add_(buffer)
      torch._foreach_lerp_(  # pylint: disable=protected-access
          self.target_params, self.online_subset,
          1.0 - self._schedule('ema_momentum'))
      self.centroids = new.detach()
      self.step += 1

      # Our step's monitoring metrics.
      used = (counts.reshape(num_heads, num_groups) > 0).sum(dim=1)
      probs = counts.reshape(num_heads, num_groups)
      probs = probs / probs.sum(dim=1, keepdim=True).clamp(min=1)
      entropy = -torch.where(probs > 0, probs * torch.log(probs),
                             torch.zeros_like(probs)).sum(dim=1)
      predicted = _assign(p.reshape(1, -1, dim).detach(), self.centroids)
      agreement = (predicted.reshape(num_heads, -1, 1, batch_size) ==
                   targets[:, None]).float().mean()
      param_norm = torch.linalg.vector_norm(torch.stack(
          torch._foreach_norm(self.params)))  # pylint: disable=protected-access
      finite = (torch.isfinite(loss) & torch.isfinite(self.centroids).all() &
                torch.isfinite(param_norm))
    return dict(loss=loss.detach(), groups_used=used.min().float(),
                assignment_entropy=entropy.mean(), target_agreement=agreement,
                grad_norm=grad_norm, nonfinite=1.0 - finite.float())


def _host_copy(state: train_state.TrainState) -> train_state.TrainState:
  """NumPy copies of a state's arrays (ours is donated by the step)."""
  return jax.tree.map(np.array, state)


def _jax_step(network, tx, step_config, mesh, state, batch,
              photometric: bool):
  """Our jitted step, compiled and run once; `photometric=False` traces it
  with the views only normalised (benchmarks/train_step.py's patch)."""
  fn = (train.jit_train_step(network, tx, step_config, mesh, state)
        if photometric else
        jax_bench.normalised_step(network, tx, step_config, mesh, state, batch))
  state, _ = fn(state, batch)
  return fn, state


def _relative(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _compare(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray],
             keys) -> tuple[float, str]:
  """Relative L2 difference of the `keys` entries together, and the worst."""
  keys = sorted(keys)
  a = np.concatenate([ours[k].ravel() for k in keys])
  b = np.concatenate([theirs[k].ravel() for k in keys])
  worst = max(keys, key=lambda k: _relative(theirs[k], ours[k]))
  return _relative(b, a), f'{worst} {_relative(theirs[worst], ours[worst]):.1e}'


def _pre_norm_biases(keys) -> set[str]:
  """Biases of a Linear right before a BatchNorm: the BN cancels any shift,
  so their gradient is zero up to rounding and their updates are noise."""
  return {k for k in keys if '.Dense_' in k and k.endswith('.bias') and
          k.replace('.Dense_', '.BatchNorm_').replace(
              '.bias', '.running_mean') in keys}


def _momentum_trace(state: train_state.TrainState) -> dict[str, np.ndarray]:
  """LARS's momentum trace (the parameter update) of our host-side state."""
  is_trace = lambda x: isinstance(x, optax.TraceState)
  trace, = [x for x in jax.tree.leaves(state.opt_state, is_leaf=is_trace)
            if is_trace(x)]
  return torch_layout(trace.trace)


def augmentation_difference(spec: augment.AugmentSpec, crops: np.ndarray,
                            pipeline: int) -> float:
  """Largest |difference| of our `augment.augment_views` and `torch_views`
  on uint8 `crops [B, n, S, S, C]`, the torch ops given our own uniforms."""
  num_examples, num_crops = crops.shape[:2]
  index = np.arange(num_examples, dtype=np.int32)
  epoch = np.zeros(num_examples, np.int32)
  ours = augment.augment_views(crops, spec, stream=Stream.TRAIN, epoch=epoch,
                               index=index, pipeline=pipeline)
  keys = augment.crop_keys(spec, Stream.TRAIN, epoch, index, pipeline,
                           np.arange(num_crops))
  draws = jax.vmap(jax.vmap(
      lambda key: jax.random.uniform(key, (_NUM_DRAWS,))))(keys)
  theirs = torch_views(
      torch.from_numpy(crops.reshape((-1,) + crops.shape[2:])), spec,
      pipeline, torch.from_numpy(np.array(draws).reshape(-1, _NUM_DRAWS)))
  ours = np.asarray(ours).reshape((-1,) + ours.shape[2:])
  return float(np.max(np.abs(theirs.permute(0, 2, 3, 1).numpy() - ours)))


def run_check(config, spec, sched, network, tx, step_config, mesh,
              fresh_state, batch, torch_batch) -> bool:
  """`--check`: both steps from one state; True when they agree.

  Compared after each step without the augmentation, as relative L2
  differences: the loss, the centroids, LARS's momentum trace (each step's
  parameter update, read from the optimiser rather than as a difference of
  float32 parameters; the biases in front of a BatchNorm are left out:
  their gradient is rounding noise), the EMA target's parameters, the BN
  running means and variances (PyTorch keeps the unbiased variance: up to
  (1 - bn_momentum) / (N - 1) more a step, N the rows of the heads'
  BatchNorms); and the metrics. The updates get a loose tolerance: after
  the first step PyTorch's float32 gradients stray from a float64 run of
  the same PyTorch step by ~2e-3 in direction (ours by ~1e-4), with its
  oneDNN kernels on or off.
  """
  jax_state = fresh_state()
  step = TorchStep(config, spec, sched, _host_copy(jax_state),
                   photometric=False)
  fn = jax_bench.normalised_step(network, tx, step_config, mesh, jax_state,
                                 batch)
  rows = config.batch_size * config.data.num_large_crops
  ok = True
  print('Without the augmentation, from the same state and crops; relative '
        'L2 differences:')
  for i in range(_CHECK_PLAIN_STEPS):
    jax_state, jax_metrics = fn(jax_state, batch)
    torch_metrics = step(torch_batch)
    host = _host_copy(jax_state)
    ours = {**torch_layout(host.params), **torch_layout(host.batch_stats)}
    theirs = torch_state(step.online)
    names = [k for k, _ in step.online.named_parameters()]
    noise = _pre_norm_biases(theirs)
    updated = [k for k in names if k not in noise]
    loss = float(jax_metrics['loss']), float(torch_metrics['loss'])
    figures, worst = {}, {}
    figures['loss'] = abs(loss[0] - loss[1]) / abs(loss[0])
    figures['centroids'] = _relative(step.centroids.numpy(), host.centroids)
    figures['updates'], worst['update'] = _compare(
        _momentum_trace(host),
        {k: b.numpy() for k, b in zip(names, step.momentum)}, updated)
    target = torch_layout(host.target_params)
    figures['target'], _ = _compare(target, torch_state(step.target),
                                    target.keys())
    for name in ('running_mean', 'running_var'):
      figures[name], worst[name] = _compare(
          ours, theirs, [k for k in theirs if k.endswith(name)])
    del worst['running_mean']  # Noise: some BN inputs have mean 0 by design.
    tolerance = dict(_CHECK_TOLERANCE, running_var=2 * (i + 1) * (
        1 - config.model.bn_momentum) / (rows - 1))
    bad = [k for k, v in figures.items() if not v <= tolerance[k]]
    ok = ok and not bad
    print(f'  step {i}: loss ours {loss[0]:.6f}, PyTorch {loss[1]:.6f}')
    print('    ' + ', '.join(f'{k} {v:.1e} (<= {tolerance[k]:.0e})'
                             for k, v in figures.items()) +
          (f'; OVER TOLERANCE: {bad}' if bad else ''))
    print('    worst: ' + '; '.join(f'{k} {v}' for k, v in worst.items()) +
          f' ({len(noise)} pre-BN biases not compared)')
    print('    metrics (ours, PyTorch): ' + ', '.join(
        f'{k} ({float(jax_metrics[k]):.5g}, {float(v):.5g})'
        for k, v in torch_metrics.items()))

  crops = np.asarray(torch_batch['online_large'][:_CHECK_AUGMENTED_EXAMPLES])
  for pipeline in (0, 1):
    difference = augmentation_difference(spec, crops, pipeline)
    ok = ok and difference <= _CHECK_TOLERANCE['augmentation']
    print(f'Augmentation, pipeline {"AB"[pipeline]}, {crops.shape[0]} x '
          f'{crops.shape[1]} crops given our uniforms: largest |difference| '
          f'{difference:.1e} (<= {_CHECK_TOLERANCE["augmentation"]:.0e})')
  print('With the augmentation (different random numbers), loss ours / '
        'PyTorch:')
  fn = train.jit_train_step(network, tx, step_config, mesh, jax_state)
  step.photometric = True
  for i in range(_CHECK_AUGMENTED_STEPS):
    jax_state, jax_metrics = fn(jax_state, batch)
    torch_metrics = step(torch_batch)
    losses = float(jax_metrics['loss']), float(torch_metrics['loss'])
    finite = all(math.isfinite(v) for v in losses) and not float(
        torch_metrics['nonfinite'])
    ok = ok and finite
    print(f'  step {_CHECK_PLAIN_STEPS + i}: {losses[0]:.4f} / '
          f'{losses[1]:.4f}' + ('' if finite else '  NOT FINITE'))
  return ok


def _time_torch(step: TorchStep, batch, steps: int):
  """Seconds per step of `steps` eager steps (synchronous on the CPU)."""
  start = time.perf_counter()
  for _ in range(steps):
    metrics = step(batch)
  return (time.perf_counter() - start) / steps, metrics


def print_torch_profile(step: TorchStep, batch, steps: int) -> None:
  """PyTorch's operators by their own CPU time a step (`torch.profiler`),
  the counterpart of `benchmarks/train_step.py --profile`."""
  activities = [torch.profiler.ProfilerActivity.CPU]
  start = time.perf_counter()
  with torch.profiler.profile(activities=activities) as prof:
    for _ in range(steps):
      step(batch)
  wall = (time.perf_counter() - start) / steps
  rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
  total = sum(e.self_cpu_time_total for e in rows)
  print(f'{"PyTorch operator":40s} {"self ms":>8s} {"calls":>6s}')
  for event in rows[:_PROFILE_ROWS]:
    print(f'{event.key:40s} {event.self_cpu_time_total / 1e3 / steps:8.1f} '
          f'{event.count / steps:6.0f}')
  rest = sum(e.self_cpu_time_total for e in rows[_PROFILE_ROWS:])
  print(f'{"(every other operator)":40s} {rest / 1e3 / steps:8.1f}')
  print(f'step wall {1e3 * wall:.1f} ms (profiled); operators\' own time '
        f'{total / 1e3 / steps:.1f} ms on the calling thread (their OpenMP '
        'workers included in it)')


def main(argv):
  del argv
  _import_torch()
  startup.start_process(multi_host=False)
  config = jax_bench._CONFIG.value  # pylint: disable=protected-access
  _check_supported(config)
  steps = jax_bench._STEPS.value  # pylint: disable=protected-access
  rounds = jax_bench._ROUNDS.value  # pylint: disable=protected-access
  threads = _THREADS.value or machine.usable_cores()
  torch.set_num_threads(threads)
  photometric = not _NO_AUGMENT.value

  # Our step, built as benchmarks/train_step.py builds it.
  pieces = jax_bench.setup(config)
  mesh, network, sched, tx, spec, batch, fresh_state = (
      pieces.mesh, pieces.network, pieces.schedules, pieces.tx, pieces.spec,
      pieces.batch, pieces.fresh_state)
  d, b = config.data, config.batch_size
  s = d.large_crop_size
  c = d.channels
  torch_batch = {k: torch.from_numpy(pieces.host_batch[k])
                 for k in ('online_large', 'target_large')}

  step_config = train.StepConfig.of(config.smog, sched, spec)
  jax_state = fresh_state()
  torch_step = TorchStep(config, spec, sched, _host_copy(jax_state),
                         photometric=photometric)
  ours_count = sum(x.size for x in jax.tree.leaves(jax_state.params))
  torch_count = sum(p.numel() for p in torch_step.online.parameters())

  print(f'CPU: {machine.cpu_description()}, {os.cpu_count()} cores '
        f'({machine.usable_cores()} usable)')
  print(f'jax {jax.__version__} ({jax.device_count()} x '
        f'{jax.devices()[0].device_kind}); torch {torch.__version__} '
        f'({torch.get_num_threads()} threads, mkldnn '
        f'{torch.backends.mkldnn.is_available()})')
  print(f'batch={b} crops/pipeline={d.num_large_crops}x{s}px '
        f'channels={c} heads={config.smog.num_heads} '
        f'groups={config.smog.num_groups} backbone={config.model.backbone} '
        f'stages={tuple(_resnet_plan(config.model)[0])} '
        f'width={config.model.width} stem={config.model.stem} compute: '
        f'ours {config.model.dtype}, PyTorch float32')
  print(f'online parameters: ours {ours_count:,}, PyTorch {torch_count:,} '
        f'({"equal" if ours_count == torch_count else "DIFFERENT"}; every '
        'key and shape matched when ours were loaded)')
  if ours_count != torch_count:
    raise SystemExit('The parameter counts differ.')

  if _CHECK.value:
    ok = run_check(config, spec, sched, network, tx, step_config, mesh,
                   fresh_state, batch, torch_batch)
    print('check: ' + ('the two steps agree' if ok else 'MISMATCH'))
    if not ok:
      raise SystemExit(1)
    return

  if jax_bench._PROFILE.value:  # pylint: disable=protected-access
    for _ in range(_WARMUP_STEPS):
      torch_step(torch_batch)
    print_torch_profile(torch_step, torch_batch, steps)
    return

  jax_fn, jax_state = _jax_step(network, tx, step_config, mesh, jax_state,
                                batch, photometric)
  for _ in range(_WARMUP_STEPS - 1):
    jax_state, _ = jax_fn(jax_state, batch)
  for _ in range(_WARMUP_STEPS):
    first_torch = torch_step(torch_batch)
  times = dict(ours=[], torch=[])
  for r in range(rounds):
    # Swapping the order every round keeps either from always following
    # the other (whose threads may still be winding down).
    for name in (('ours', 'torch') if r % 2 == 0 else ('torch', 'ours')):
      if name == 'ours':
        seconds, jax_state, jax_metrics = jax_bench.timed_steps(
            jax_fn, jax_state, batch, steps)
      else:
        seconds, torch_metrics = _time_torch(torch_step, torch_batch, steps)
      times[name].append(seconds)

  print(f'{rounds} alternating rounds of {steps} steps each, after '
        f'{_WARMUP_STEPS} warm-up steps; augmentation '
        f'{"on" if photometric else "off (views only normalised)"}; an image '
        f'is one of the {b} examples a step ({2 * d.num_large_crops} crops '
        'each):')
  labels = dict(ours='ours (JAX, jit)', torch='PyTorch (eager)')
  for name, values in times.items():
    median, best = statistics.median(values), min(values)
    print(f'  {labels[name]:16s} median {1e3 * median:8.1f} ms/step '
          f'({b / median:7.1f} img/s)   best {1e3 * best:8.1f} ms/step '
          f'({b / best:7.1f} img/s)')
  ratio = lambda f: f(times['ours']) / f(times['torch'])
  print(f'  ours / PyTorch, time per step: median '
        f'{ratio(statistics.median):.2f}, best {ratio(min):.2f} (below 1: ours '
        'is faster)')
  print(f'sanity: loss of PyTorch at its last warm-up step '
        f'{float(first_torch["loss"]):.4f}, at its last step '
        f'{float(torch_metrics["loss"]):.4f}; ours at its last step '
        f'{float(jax_metrics["loss"]):.4f}' + (
            '' if photometric else ' (the same steps from the same state, '
            'apart by float32 rounding that grows over the steps)'))


if __name__ == '__main__':
  app.run(main)
