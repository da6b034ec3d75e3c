"""Evaluation of frozen SMoG backbones: features, kNN, linear probe, runs.

Public API:
  extract_features(backbone, variables, iterator, mesh, spec) -> (features,
    labels), uint8 crops normalised on the device
  knn_top1 / knn_accuracy / knn_classify: weighted kNN (knn.py)
  fit_linear, evaluate_probe, train_probe: the linear probe (linear.py)
  evaluators.Knn / FastLinear / Linear: plug-ins with `run(variables)`
  PixelFeatures: the raw-pixel "backbone" of the pixel baseline
  run(config, workdir): the linear_eval binary's logic (runner.py)

Importing this package does not import TensorFlow.
"""

from smog_jax.evaluation.features import (PixelFeatures, array_batches,
                                          extract_features)
from smog_jax.evaluation.knn import knn_accuracy, knn_classify, knn_top1
from smog_jax.evaluation.linear import (LinearConfig, ProbeState,
                                        evaluate_probe, fit_linear,
                                        train_probe)

__all__ = [
    'LinearConfig', 'PixelFeatures', 'ProbeState', 'array_batches',
    'evaluate_probe', 'extract_features', 'fit_linear', 'knn_accuracy',
    'knn_classify', 'knn_top1', 'run', 'train_probe',
]


def run(config, workdir, mesh=None):
  """See `smog_jax.evaluation.runner.run` (imported lazily: it pulls in
  orbax and the export/checkpoint modules)."""
  from smog_jax.evaluation import runner  # pylint: disable=g-import-not-at-top
  return runner.run(config, workdir, mesh=mesh)
