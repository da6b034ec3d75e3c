"""torchvision-layout checkpoints into smog_jax backbones, and back out.

Import a torchvision-layout state dict (torchvision's own weights, or the
ResNet-50 / ViT / Swin checkpoints of SMoG, SwAV, MoCo, BYOL, DINO, ...) as
a backbone export directory (the format `smog_jax.export` writes, which
`export.load_backbone` and `linear_eval --config.pretrained=DIR` read):

  python -m smog_jax.convert --from_torch FILE --model NAME --output DIR

FILE is a `.safetensors` (read without PyTorch) or a `.pth` / `.pth.tar`
(PyTorch needed for that path only; loaded with `weights_only=True`, so that
a file from the internet cannot run code). A `state_dict` or `model` nesting
and the prefixes `module.`, `backbone.`, `encoder.`, `encoder_q.`,
`base_encoder.` (and `module.` + each) are unwrapped: the prefix under which
most keys are torchvision's names is taken, keys outside it (a momentum
encoder, a queue) and heads under it (`fc`, `head`, `heads`, SSL projectors
and predictors) are dropped and listed in the log. NAME (`MODEL_NAMES`)
takes its backbone config from the recipe in configs/ (float32) and
torchvision's ImageNet preprocessing (`TORCHVISION_PREPROCESSING`: mean
(0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), where this project's own
ImageNet std is the spec's (0.228, 0.224, 0.225)).

Export a backbone (an export directory or a pre-training workdir) with
torchvision's key names and layouts (OIHW convolutions, `[out, in]` linear
weights, BatchNorm running statistics, ...):

  python -m smog_jax.convert --to_torch DIR_OR_WORKDIR --output FILE.safetensors

so that `torchvision.models.resnet50().load_state_dict(
safetensors.torch.load_file(FILE), strict=False)` misses only the classifier.
docs/interop.md has the parity figures and the key names detection code
expects.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pickle
import re
from typing import Any, Iterable, Mapping, Sequence

import flax.linen as nn
import ml_collections
import numpy as np
import safetensors.numpy
from absl import app
from absl import flags
from absl import logging
from etils import epath
from flax import traverse_util

from smog_jax import checkpointing
from smog_jax import console
from smog_jax import export
from smog_jax import models
from smog_jax import recipes
from smog_jax import startup
from smog_jax.models import ResNet, SwinTransformer, VisionTransformer
from smog_jax.models import swin as swin_lib

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'configs')

# --model NAME -> (recipe file in configs/, its variant, backbone).
_RECIPES = {
    'resnet18': ('imagenet_resnet50.py', '', 'resnet18'),
    'resnet34': ('imagenet_resnet50.py', '', 'resnet34'),
    'resnet50': ('imagenet_resnet50.py', '', 'resnet50'),
    'resnet101': ('imagenet_resnet50.py', '', 'resnet101'),
    'resnet152': ('imagenet_resnet50.py', '', 'resnet152'),
    'resnet50w2': ('imagenet_resnet50.py', 'w2', 'resnet50'),
    'vit_s16': ('imagenet_vit_s16.py', '', 'vit_s16'),
    'vit_b16': ('imagenet_vit_s16.py', 'b16', 'vit_b16'),
    'swin_t': ('imagenet_swin_t.py', None, 'swin_t'),
}
MODEL_NAMES = tuple(_RECIPES)

# torchvision's normalisation (its transforms and every checkpoint trained
# with them); the project's own IMAGENET_STD is the spec's 0.228.
TORCHVISION_PREPROCESSING = dict(
    dataset='imagenet2012', image_size=224, channels=3,
    mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
    eval_crop_fraction=224 / 256)

# Wrappers of public checkpoints, outermost first.
PREFIXES = tuple(outer + inner for outer in ('', 'module.')
                 for inner in ('', 'backbone.', 'encoder.', 'encoder_q.',
                               'base_encoder.'))
# First names of classifiers and SSL heads, dropped on import.
HEAD_NAMES = frozenset(('fc', 'head', 'heads', 'classifier', 'projector',
                        'predictor', 'projection', 'projection_head',
                        'prototypes', 'prediction'))
# Names older torchvision versions saved (its ViT MLP before 0.13).
_KEY_ALIASES = ((re.compile(r'\.mlp\.linear_1\.'), '.mlp.0.'),
                (re.compile(r'\.mlp\.linear_2\.'), '.mlp.3.'))

# How a tensor of ours becomes torchvision's (`TorchEntry.role`):
#   conv: HWIO kernel <-> OIHW weight; linear: [in, out] <-> [out, in];
#   token: class token [1, D] <-> [1, 1, D]; position: [N, D] <-> [1, N, D];
#   same: unchanged; batch_count (num_batches_tracked) and position_index
#   (Swin's relative_position_index) are torchvision buffers we compute.
_BUFFER_ROLES = ('batch_count', 'position_index')

_LEAF_NAMES = dict(kernel='weight', scale='weight', bias='bias',
                   mean='running_mean', var='running_var')


class ConversionError(ValueError):
  """A checkpoint that cannot be converted (one sentence saying why)."""


@dataclasses.dataclass(frozen=True)
class TorchEntry:
  """One key of the torchvision state dict and where it lives in ours.

  Attributes:
    key: torchvision's name.
    path: ours, `(collection, module, ..., leaf)`; None for buffers we do
      not keep.
    shape: torchvision's shape.
    role: how the tensor is laid out (see `_BUFFER_ROLES`).
  """
  key: str
  path: tuple[str, ...] | None
  shape: tuple[int, ...]
  role: str


@dataclasses.dataclass(frozen=True)
class ImportReport:
  """What an import unwrapped and dropped.

  Attributes:
    prefix: the wrapper prefix taken off the keys ('' for none).
    dropped_heads: classifier and SSL head keys under the prefix.
    dropped_outside_prefix: keys not under the prefix.
    ignored_buffers: torchvision buffers not kept (`num_batches_tracked`,
      Swin's checked `relative_position_index`).
  """
  prefix: str
  dropped_heads: list[str]
  dropped_outside_prefix: list[str]
  ignored_buffers: list[str]


def _names(keys: Sequence[str], limit: int = 6) -> str:
  if not keys:
    return 'none'
  keys = sorted(keys)
  shown = ', '.join(keys[:limit])
  return shown + (f' and {len(keys) - limit} more' if len(keys) > limit
                  else '')


def _count(keys: Sequence[str]) -> str:
  return f'{len(keys)} key' + ('' if len(keys) == 1 else 's')


def model_config(name: str) -> ml_collections.ConfigDict:
  """The `config.model` of `--model name`: its recipe's backbone, float32."""
  if name not in _RECIPES:
    raise ConversionError(f'Unknown --model {name!r}; choose one of '
                          f'{", ".join(MODEL_NAMES)}.')
  recipe, variant, backbone = _RECIPES[name]
  path = os.path.join(CONFIGS_DIR, recipe)
  if not os.path.isfile(path):
    raise ConversionError(f'{path} is missing: run the converter from a '
                          'checkout of smog_jax (pip install -e .).')
  config = ml_collections.ConfigDict(
      recipes.load_config(path, variant).model.to_dict())
  config.backbone = backbone
  config.dtype = 'float32'
  if backbone in ('resnet18', 'resnet34'):
    config.block = 'basic'  # Not read for named depths; said for the reader.
  return config


def _role(leaf: str, ndim: int) -> str:
  """How our variable named `leaf` is laid out in torchvision (`_to_torch`)."""
  if leaf == 'kernel':
    return 'conv' if ndim == 4 else 'linear'
  return {'position_embedding': 'position', 'class_token': 'token'}.get(
      leaf, 'same')


_RESNET_SHORTCUT = {'conv_proj': 'downsample.0', 'norm_proj': 'downsample.1'}


def _resnet_prefix(module: ResNet, names: Sequence[str]) -> str:
  """torchvision's module name of our ResNet module path `names`."""
  top, *inner = names
  if top == 'conv_init':
    return 'conv1'
  if top == 'bn_init':
    return 'bn1'
  index = int(top.rsplit('_', 1)[1])
  for stage, num_blocks in enumerate(module.stage_sizes):
    if index < num_blocks:
      break
    index -= num_blocks
  (layer,) = inner
  if layer in _RESNET_SHORTCUT:
    name = _RESNET_SHORTCUT[layer]
  else:
    kind, number = layer.rsplit('_', 1)
    name = {'Conv': 'conv', 'BatchNorm': 'bn'}[kind] + str(int(number) + 1)
  return f'layer{stage + 1}.{index}.{name}'


_VIT_BLOCK = {'LayerNorm_0': 'ln_1', 'LayerNorm_1': 'ln_2',
              'SelfAttention_0/qkv': 'self_attention.in_proj',
              'SelfAttention_0/proj': 'self_attention.out_proj',
              'MLP_0/Dense_0': 'mlp.0', 'MLP_0/Dense_1': 'mlp.3'}
_SWIN_BLOCK = {'LayerNorm_0': 'norm1', 'LayerNorm_1': 'norm2',
               'WindowAttention_0': 'attn',
               'WindowAttention_0/attention/qkv': 'attn.qkv',
               'WindowAttention_0/attention/proj': 'attn.proj',
               'MLP_0/Dense_0': 'mlp.0', 'MLP_0/Dense_1': 'mlp.3'}
_SWIN_MERGE = {'LayerNorm_0': 'norm', 'Dense_0': 'reduction'}


def _vit_prefix(names: Sequence[str]) -> str:
  top, inner = names[0], '/'.join(names[1:])
  if top == 'patch_embedding':
    return 'conv_proj'
  if top == 'norm':
    return 'encoder.ln'
  block = int(top.removeprefix('block'))
  return f'encoder.layers.encoder_layer_{block}.{_VIT_BLOCK[inner]}'


def _swin_prefix(names: Sequence[str]) -> str:
  top, inner = names[0], '/'.join(names[1:])
  if top in ('patch_embedding', 'patch_norm'):
    return {'patch_embedding': 'features.0.0',
            'patch_norm': 'features.0.2'}[top]
  if top == 'norm':
    return 'norm'
  stage_block = re.fullmatch(r'stage(\d+)_block(\d+)', top)
  if stage_block:
    stage, block = map(int, stage_block.groups())
    return f'features.{2 * stage + 1}.{block}.{_SWIN_BLOCK[inner]}'
  merge = int(top.removeprefix('merge'))
  return f'features.{2 * merge}.{_SWIN_MERGE[inner]}'


def _torch_key(module: nn.Module, path: tuple[str, ...]) -> str:
  """torchvision's key of our variable at `path` (collection first)."""
  *names, leaf = path[1:]
  if isinstance(module, VisionTransformer) and not names:
    return {'position_embedding': 'encoder.pos_embedding',
            'class_token': 'class_token'}[leaf]
  if isinstance(module, ResNet):
    prefix = _resnet_prefix(module, names)
  elif isinstance(module, VisionTransformer):
    prefix = _vit_prefix(names)
  else:
    prefix = _swin_prefix(names)
  if leaf == 'relative_position_table':
    return f'{prefix}.relative_position_bias_table'
  if prefix.endswith('.in_proj'):  # nn.MultiheadAttention's fused names.
    return f'{prefix}_{_LEAF_NAMES[leaf]}'
  return f'{prefix}.{_LEAF_NAMES[leaf]}'


def _torch_shape(role: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if role == 'conv':
    return (shape[3], shape[2], shape[0], shape[1])
  if role == 'linear':
    return (shape[1], shape[0])
  if role in ('token', 'position'):
    return (1,) + shape
  return shape


def torch_layout(module: nn.Module, variables: Mapping[str, Any]
                 ) -> dict[str, TorchEntry]:
  """torchvision's state dict (heads excluded) of a backbone, by key.

  Args:
    module: a `ResNet`, `VisionTransformer` or `SwinTransformer`.
    variables: its `{'params', 'batch_stats'}`, arrays or shapes.

  Returns:
    Every key of the torchvision model's state dict but its classifier:
    one per variable of ours, and the buffers torchvision keeps
    (`num_batches_tracked`, Swin's `relative_position_index`).
  """
  if not isinstance(module, (ResNet, VisionTransformer, SwinTransformer)):
    raise ConversionError(f'{type(module).__name__} has no torchvision '
                          'layout; convert a ResNet, ViT or Swin.')
  layout = {}
  for path, value in traverse_util.flatten_dict(dict(variables)).items():
    shape, key = tuple(value.shape), _torch_key(module, path)
    role = _role(path[-1], len(shape))
    layout[key] = TorchEntry(key, path, _torch_shape(role, shape), role)
    if path[-1] == 'mean':
      count = key.replace('running_mean', 'num_batches_tracked')
      layout[count] = TorchEntry(count, None, (), 'batch_count')
    if path[-1] == 'relative_position_table':
      index = key.replace('bias_table', 'index')
      layout[index] = TorchEntry(index, None, (module.window**4,),
                                 'position_index')
  return layout


def _position_index(module: SwinTransformer) -> np.ndarray:
  return swin_lib.relative_position_index(
      module.window, module.window).reshape(-1).astype(np.int64)


def _to_torch(entry: TorchEntry, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if entry.role == 'conv':
    return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
  if entry.role == 'linear':
    return np.ascontiguousarray(value.T)
  if entry.role in ('token', 'position'):
    return value[None]
  return value


def _from_torch(entry: TorchEntry, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if entry.role == 'conv':
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if entry.role == 'linear':
    return np.ascontiguousarray(value.T)
  if entry.role in ('token', 'position'):
    return value[0]
  return value


def unwrap_nesting(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
  """The state dict inside `{'state_dict': ...}` / `{'model': ...}` nestings."""
  while True:
    inner = next((checkpoint[name] for name in ('state_dict', 'model')
                  if isinstance(checkpoint.get(name), Mapping)), None)
    if inner is None:
      return checkpoint
    checkpoint = inner


def _read_pickle(path: str) -> dict[str, np.ndarray]:
  if importlib.util.find_spec('torch') is None:
    raise ConversionError(
        f'{path} is a PyTorch pickle and reading it needs PyTorch: pip '
        'install torch, or save the state dict as .safetensors.')
  import torch  # pylint: disable=g-import-not-at-top
  try:
    checkpoint = torch.load(path, weights_only=True, map_location='cpu')
  except pickle.UnpicklingError as e:
    found = re.search(r'Unsupported global: GLOBAL ([\w.]+)', str(e))
    what = f' ({found.group(1)})' if found else ''
    raise ConversionError(
        f'{path} holds objects other than tensors and plain containers'
        f'{what}, which weights_only=True refuses so that loading cannot run '
        'code; if you trust the file, save its state dict alone with '
        'safetensors.torch.save_file and convert that.') from None
  arrays = {}
  for key, value in unwrap_nesting(checkpoint).items():
    if isinstance(value, torch.Tensor):
      value = value.detach()
      arrays[key] = (value.float() if value.is_floating_point()
                     else value).numpy()
  return arrays


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The flat state dict of a `.safetensors` or PyTorch pickle at `path`."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConversionError(f'{path} does not exist; give the checkpoint '
                          'file to --from_torch.')
  if path.endswith('.safetensors'):
    return dict(safetensors.numpy.load_file(path))
  return _read_pickle(path)


def _best_prefix(keys: Iterable[str], expected: Mapping[str, Any]) -> str:
  """The wrapper prefix under which most keys are torchvision's names."""
  keys = list(keys)
  counts = [sum(k.startswith(p) and k[len(p):] in expected for k in keys)
            for p in PREFIXES]
  return PREFIXES[int(np.argmax(counts))] if max(counts) else ''


def _alias(key: str) -> str:
  for pattern, name in _KEY_ALIASES:
    key = pattern.sub(name, key)
  return key


def import_state_dict(state_dict: Mapping[str, np.ndarray], name: str,
                      source: str = 'the checkpoint'
                      ) -> tuple[dict[str, Any], ImportReport]:
  """Our variables of `--model name` from a torchvision-layout state dict.

  Args:
    state_dict: flat, name -> array (nestings already unwrapped).
    name: one of `MODEL_NAMES`.
    source: the file, for messages.

  Returns:
    `({'params', 'batch_stats'}` float32 arrays, what was dropped).

  Raises:
    ConversionError: keys missing or unexpected, a shape that differs, or a
      Swin `relative_position_index` that is not torchvision's.
  """
  module = models.build_backbone(model_config(name))
  layout = torch_layout(
      module, export.abstract_variables(module, TORCHVISION_PREPROCESSING))
  state_dict = {_alias(k): v for k, v in state_dict.items()}
  prefix = _best_prefix(state_dict, layout)
  used, heads, outside, unexpected = {}, [], [], []
  for key, value in state_dict.items():
    if not key.startswith(prefix):
      outside.append(key)
      continue
    bare = key[len(prefix):]
    if bare in layout:
      used[bare] = value
    elif bare.split('.', 1)[0] in HEAD_NAMES:
      heads.append(key)
    else:
      unexpected.append(key)
  if not used:
    raise ConversionError(
        f'No key of {source} ({_names(list(state_dict), 3)}) is a key of '
        f"torchvision's {name}, with or without the prefixes "
        f'{", ".join(p for p in PREFIXES if p)}; is --model right?')
  missing = [k for k, e in layout.items()
             if k not in used and e.role not in _BUFFER_ROLES]
  if missing or unexpected:
    problems = []
    if missing:
      problems.append(f"lacks {_count(missing)} of torchvision's {name} "
                      f'({_names(missing)})')
    if unexpected:
      problems.append(f'has {_count(unexpected)} that {name} does not '
                      f'have ({_names(unexpected)})')
    raise ConversionError(f'{source} {" and ".join(problems)} (prefix '
                          f'{prefix!r}); is --model right?')
  for key, value in used.items():
    if tuple(value.shape) != layout[key].shape:
      raise ConversionError(
          f'{source}: {prefix}{key} has shape {tuple(value.shape)} where '
          f"torchvision's {name} has {layout[key].shape}; is --model right?")
    if layout[key].role == 'position_index' and not np.array_equal(
        value, _position_index(module)):
      raise ConversionError(
          f'{source}: {prefix}{key} is not the relative position index of '
          f'{module.window}x{module.window} windows, which {name} uses; '
          'convert a torchvision Swin-T checkpoint.')
  variables = traverse_util.unflatten_dict({
      layout[k].path: _from_torch(layout[k], v) for k, v in used.items()
      if layout[k].role not in _BUFFER_ROLES})
  ignored = sorted(prefix + k for k in used
                   if layout[k].role in _BUFFER_ROLES)
  return variables, ImportReport(prefix, sorted(heads), sorted(outside),
                                 ignored)


def from_torch(path: str, name: str, output: str) -> str:
  """Converts the torchvision-layout checkpoint `path` to an export dir.

  Args:
    path: `.safetensors`, `.pth` or `.pth.tar`.
    name: one of `MODEL_NAMES`.
    output: the export directory to write (see `smog_jax.export`).

  Returns:
    `output`, absolute.
  """
  source = checkpointing.absolute(os.fspath(path))
  config = model_config(name)
  variables, report = import_state_dict(read_state_dict(source), name,
                                        source)
  console.show('%s: prefix %r unwrapped; dropped %d head keys (%s) and %d '
               'keys outside the prefix (%s); %d torchvision buffers '
               '(num_batches_tracked, relative_position_index) not kept '
               '(--to_torch writes them anew).', source, report.prefix,
               len(report.dropped_heads), _names(report.dropped_heads),
               len(report.dropped_outside_prefix),
               _names(report.dropped_outside_prefix),
               len(report.ignored_buffers))
  output = export.write_export(output, config, TORCHVISION_PREPROCESSING,
                               variables, step=0, source=source)
  console.show('Wrote %s (%s, torchvision preprocessing: mean %s, std %s).',
               output, name, TORCHVISION_PREPROCESSING['mean'],
               TORCHVISION_PREPROCESSING['std'])
  return output


def _reference_differences(module: nn.Module) -> list[str]:
  """Where `module` computes other features than torchvision's model."""
  differences = []
  if isinstance(module, ResNet):
    if module.stem != 'imagenet':
      differences.append(f"stem {module.stem!r} (torchvision's conv1 is 7x7 "
                         'with a max-pool)')
    if module.padding != 'symmetric':
      differences.append(f"padding {module.padding!r} (PyTorch's is "
                         "'symmetric')")
  if isinstance(module, VisionTransformer):
    if module.pooling != 'cls':
      differences.append(f"pooling {module.pooling!r} (torchvision's is the "
                         'class token)')
    if module.layer_norm_epsilon != 1e-6:
      differences.append(f'LayerNorm epsilon {module.layer_norm_epsilon} '
                         "(torchvision's is 1e-6)")
  return differences


def export_state_dict(module: nn.Module, variables: Mapping[str, Any]
                      ) -> dict[str, np.ndarray]:
  """torchvision's state dict (no classifier) of our backbone variables."""
  flat = traverse_util.flatten_dict(dict(variables))
  tensors = {}
  for key, entry in torch_layout(module, variables).items():
    if entry.role == 'batch_count':
      tensors[key] = np.zeros((), np.int64)
    elif entry.role == 'position_index':
      tensors[key] = _position_index(module)
    else:
      tensors[key] = _to_torch(entry, flat[entry.path])
  return tensors


def to_torch(path: str, output: str) -> str:
  """Writes the backbone at `path` as a torchvision-layout `.safetensors`.

  Args:
    path: an export directory or a pre-training workdir.
    output: the `.safetensors` file to write (must not exist).

  Returns:
    `output`.
  """
  output = os.fspath(output)
  if not output.endswith('.safetensors'):
    raise ConversionError(f'--output {output} must end with .safetensors.')
  if os.path.exists(output):
    raise ConversionError(f'{output} exists; choose a new --output.')
  if not epath.Path(path).exists():
    raise ConversionError(f'{path} does not exist; give an export directory '
                          'or a pre-training workdir to --to_torch.')
  loaded = export.load_backbone_info(path)
  tensors = export_state_dict(loaded.module, loaded.variables)
  for difference in _reference_differences(loaded.module):
    logging.warning('%s has %s: torchvision loads the weights, but its '
                    'features differ from ours.', path, difference)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  safetensors.numpy.save_file(tensors, output, metadata={
      'format': 'pt',
      'smog_jax_model': json.dumps(loaded.model_config.to_dict()),
      'smog_jax_preprocessing': json.dumps(loaded.preprocessing),
      'smog_jax_step': str(loaded.step),
      'smog_jax_source': checkpointing.absolute(os.fspath(path))})
  console.show('Wrote %d torchvision-layout tensors of %s (step %d) to %s.',
               len(tensors), path, loaded.step, output)
  return output


def define_flags() -> None:
  """Registers the binary's flags (not at import, as `smog_jax.export`)."""
  flags.DEFINE_string('from_torch', None, 'A torchvision-layout checkpoint '
                      '(.safetensors, .pth, .pth.tar) to import.')
  flags.DEFINE_enum('model', None, MODEL_NAMES,
                    'The backbone of --from_torch.')
  flags.DEFINE_string('to_torch', None, 'An export directory or pre-training '
                      'workdir to write as a torchvision .safetensors.')
  flags.DEFINE_string('output', None, 'The export directory (--from_torch) '
                      'or .safetensors file (--to_torch) to write.')
  flags.mark_flag_as_required('output')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  startup.start_binary('convert', None, multi_host=False)
  f = flags.FLAGS
  try:
    if bool(f.from_torch) == bool(f.to_torch):
      raise ConversionError('give one of --from_torch FILE --model NAME or '
                            '--to_torch DIR_OR_WORKDIR.')
    if f.from_torch:
      if not f.model:
        raise ConversionError('--from_torch needs --model, one of '
                              f'{", ".join(MODEL_NAMES)}.')
      from_torch(f.from_torch, f.model, f.output)
    else:
      to_torch(f.to_torch, f.output)
  except (ConversionError, FileExistsError, FileNotFoundError) as e:
    raise SystemExit(f'smog_jax.convert: {e}') from None


if __name__ == '__main__':
  define_flags()
  app.run(main)
