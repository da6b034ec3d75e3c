"""torchvision's features on seeded weights: the parity fixtures of
tests/test_convert.py, and a check of an exported `.safetensors` in PyTorch.

Needs PyTorch and torchvision (not project requirements; the tests never
import them). Write the fixtures (one JSON per model):

  python benchmarks/torchvision_reference.py --output tests/data/torchvision

Each model is filled with `smog_jax.seeded_weights.seeded_state_dict` (the
weight rule, NumPy only) for its own state-dict keys, its classifier replaced
by the identity, and run in float32 on `seeded_images` (2 x 3 x 224 x 224):
the fixture holds the pooled features (ResNet: the global average before
`fc`; ViT: the class token after the encoder's LayerNorm; Swin: the average
after the final LayerNorm), the seeds, the rule's version, digests of the
weights and input, and the versions of torch, torchvision and NumPy.
torchvision has no ViT-S/16: `vit_s16` is torchvision's `VisionTransformer`
class at ViT-S sizes (patch 16, 12 layers, 6 heads, width 384, MLP 1536).

Check a file written by `python -m smog_jax.convert --to_torch` (the keys
torchvision's model misses or does not expect, and, for the seeded weights,
the features against the fixture):

  python benchmarks/torchvision_reference.py --check_export FILE \
      --models resnet50
"""

import argparse
import datetime
import json
import os
import platform
import sys
import types

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from smog_jax import seeded_weights  # pylint: disable=g-import-not-at-top

# The models need none of torchvision's compiled ops, which may not load.
sys.modules.setdefault('torchvision._meta_registrations',
                       types.ModuleType('torchvision._meta_registrations'))
import torch  # pylint: disable=g-import-not-at-top
import torchvision  # pylint: disable=g-import-not-at-top

WEIGHT_SEED = 0
INPUT_SEED = 1
BATCH = 2
IMAGE_SIZE = 224


def _vit_s16() -> torch.nn.Module:
  return torchvision.models.vision_transformer.VisionTransformer(
      image_size=224, patch_size=16, num_layers=12, num_heads=6,
      hidden_dim=384, mlp_dim=1536)


# name -> (constructor, its description, the classifier attribute).
MODELS = {
    'resnet18': (torchvision.models.resnet18,
                 'torchvision.models.resnet18()', 'fc'),
    'resnet50': (torchvision.models.resnet50,
                 'torchvision.models.resnet50()', 'fc'),
    'vit_s16': (_vit_s16,
                'torchvision.models.vision_transformer.VisionTransformer('
                'image_size=224, patch_size=16, num_layers=12, num_heads=6, '
                'hidden_dim=384, mlp_dim=1536)', 'heads'),
    'vit_b16': (torchvision.models.vit_b_16,
                'torchvision.models.vit_b_16()', 'heads'),
    'swin_t': (torchvision.models.swin_t, 'torchvision.models.swin_t()',
               'head'),
}
FEATURES_OF = {
    'fc': 'global average pool of the trunk (fc = Identity)',
    'heads': 'class token after encoder.ln (heads = Identity)',
    'head': 'average after the final norm (head = Identity)',
}


def _trunk(name: str) -> torch.nn.Module:
  """The model of `name` without its classifier, in evaluation mode."""
  build, _, head = MODELS[name]
  model = build()
  setattr(model, head, torch.nn.Identity())
  return model.eval()


def _images() -> np.ndarray:
  return seeded_weights.seeded_images(INPUT_SEED, BATCH, IMAGE_SIZE)


def _features(model: torch.nn.Module) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(_images())).numpy()


def reference(name: str) -> dict:
  """The fixture of `name`: torchvision's features on the seeded weights."""
  model = _trunk(name)
  own = model.state_dict()
  weights = seeded_weights.seeded_state_dict(
      {k: tuple(v.shape) for k, v in own.items()}, WEIGHT_SEED)
  for key, value in own.items():
    if key.endswith('relative_position_index'):
      np.testing.assert_array_equal(weights[key], value.numpy(), err_msg=key)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()},
                        strict=True)
  features = _features(model)
  _, description, head = MODELS[name]
  return dict(
      model=name, torchvision_model=description,
      features_of=FEATURES_OF[head], dtype='float32',
      weight_seed=WEIGHT_SEED, input_seed=INPUT_SEED,
      input_shape=[BATCH, 3, IMAGE_SIZE, IMAGE_SIZE],
      weight_rule_version=seeded_weights.WEIGHT_RULE_VERSION,
      weights_sha256=seeded_weights.digest(weights),
      input_sha256=seeded_weights.digest({'images': _images()}),
      torch_version=torch.__version__,
      torchvision_version=torchvision.__version__,
      numpy_version=np.__version__, python_version=platform.python_version(),
      date=datetime.date.today().isoformat(),
      command='python benchmarks/torchvision_reference.py',
      # float32 values in their shortest round-trip form.
      features=[[float(str(v)) for v in row] for row in features])


def check_export(path: str, name: str) -> None:
  """Loads `path` into torchvision's `name` as a user would and reports."""
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  build, _, head = MODELS[name]
  model = build()
  result = model.load_state_dict(safetensors.torch.load_file(path),
                                 strict=False)
  print(f'{name}: missing keys {result.missing_keys}, unexpected keys '
        f'{result.unexpected_keys}')
  setattr(model, head, torch.nn.Identity())
  features = _features(model.eval())
  fixture_path = os.path.join(REPO, 'tests', 'data', 'torchvision',
                              f'{name}.json')
  with open(fixture_path) as f:
    expected = np.asarray(json.load(f)['features'], np.float32)
  error = np.linalg.norm(features - expected) / np.linalg.norm(expected)
  print(f'{name}: relative L2 of the features against {fixture_path} '
        f'(meaningful for the seeded weights): {error:.3g}')


def _to_json(fixture: dict) -> str:
  """The fixture as JSON, a line per field and per row of features."""
  rows = ',\n  '.join(json.dumps(row) for row in fixture['features'])
  fields = {k: v for k, v in fixture.items() if k != 'features'}
  return (json.dumps(fields, indent=1)[:-2] +
          f',\n "features": [\n  {rows}\n ]\n}}\n')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--models', default=','.join(MODELS),
                      help='comma-separated, of ' + ', '.join(MODELS))
  parser.add_argument('--output', default=os.path.join(REPO, 'tests', 'data',
                                                       'torchvision'))
  parser.add_argument('--check_export', default=None,
                      help='a .safetensors of --to_torch to check instead')
  args = parser.parse_args()
  torch.manual_seed(0)  # The construction's own init is overwritten anyway.
  names = args.models.split(',')
  unknown = sorted(set(names) - set(MODELS))
  if unknown:
    parser.error(f'unknown models {unknown}; choose from {list(MODELS)}.')
  if args.check_export:
    for name in names:
      check_export(args.check_export, name)
    return
  os.makedirs(args.output, exist_ok=True)
  for name in names:
    fixture = reference(name)
    path = os.path.join(args.output, f'{name}.json')
    with open(path, 'w') as f:
      f.write(_to_json(fixture))
    norm = np.linalg.norm(fixture['features'], axis=1)
    print(f'{name}: features {np.shape(fixture["features"])}, norms {norm}'
          f' -> {path}')


if __name__ == '__main__':
  main()
