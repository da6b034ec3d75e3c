"""Named experiment configs of benchmarks/quality_fashion_mnist.py.

List-valued data fields (crop scales, blur sigma) cannot be overridden from
the command line, so the experiments that change them are named here:

  --config benchmarks/quality_configs.py:pretrain/blur_ref_relative
  --config benchmarks/quality_configs.py:linear/scale_0.5
"""

import os

from smog_jax import recipes

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str, variant: str):
  return recipes.load_config(os.path.join(_ROOT, 'configs', f'{name}.py'),
                             variant)


# The reference's blur sigma (0.1-2.0 px at 224 px) relative to the side.
_REF_RELATIVE_SIGMA = (0.1 * 28 / 224, 2.0 * 28 / 224)



def _pipelines(a: dict, b: dict | None = None) -> dict:
  """Changes of the records of pipelines A and B (B: as A's if None)."""
  return dict(pipeline_a=a, pipeline_b=a if b is None else b)


_PRETRAIN = {
    'blur_ref_relative': _pipelines(dict(blur_sigma=_REF_RELATIVE_SIGMA)),
    'no_blur': _pipelines(dict(blur_prob=0.0)),
    # Large-crop scales (the default's blur is already the relative one).
    'crop_0.4': dict(large_scale=(0.4, 1.0)),
    'crop_0.6': dict(large_scale=(0.6, 1.0)),
    'crop_0.08': dict(large_scale=(0.08, 1.0)),
    # Solarize (the reference's 0 / 0.2 in the two pipelines).
    'no_solarize': _pipelines(dict(solarize_prob=0.0)),
    'solarize_both': _pipelines(dict(solarize_prob=0.2)),
}
_LINEAR = {
    'scale_0.5': dict(linear_scale=(0.5, 1.0)),
    'scale_0.8': dict(linear_scale=(0.8, 1.0)),
}


def get_config(variant: str):
  """`pretrain/NAME` (configs/fashion_mnist.py) or `linear/NAME`
  (configs/linear_eval.py:fashion_mnist) with the data fields of NAME."""
  kind, name = variant.split('/')
  if kind == 'pretrain':
    config = _load('fashion_mnist', '')
    changes = _PRETRAIN[name]
  else:
    config = _load('linear_eval', 'fashion_mnist')
    changes = _LINEAR[name]
  config.data.update(changes)
  return config
