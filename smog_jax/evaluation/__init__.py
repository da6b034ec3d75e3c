"""Evaluation of frozen SMoG backbones: features, kNN, linear probe, runs.

Public API:
  extract_features(backbone, variables, iterator, mesh) -> (features, labels)
  knn_top1(train_x, train_y, test_x, test_y, num_classes, k=20,
           temperature=0.07) -> float (fraction)
  knn_accuracy(...) -> {'top1', 'top5'}; knn_classify(...) -> [T, top] ids
  fit_linear(train_x, train_y, num_classes, LinearConfig, mesh) -> ProbeState
  evaluate_probe(state, x, y, mesh) -> {'top1', 'top5', 'num_examples'}
  iterate_arrays(images, labels, batch_size, mesh): in-memory eval iterator
  PixelFeatures: the raw-pixel "backbone" of the pixel baseline
  run(config, workdir): the linear_eval binary's logic (runner.py)

Importing this package has no side effects and does not import TensorFlow.
"""

from smog_jax.evaluation.features import (PixelFeatures, extract_features,
                                          iterate_arrays, shard_global_batch)
from smog_jax.evaluation.knn import knn_accuracy, knn_classify, knn_top1
from smog_jax.evaluation.linear import (LinearConfig, ProbeState,
                                        evaluate_probe, fit_linear)

__all__ = [
    'LinearConfig', 'PixelFeatures', 'ProbeState', 'evaluate_probe',
    'extract_features', 'fit_linear', 'iterate_arrays', 'knn_accuracy',
    'knn_classify', 'knn_top1', 'run', 'shard_global_batch',
]


def run(config, workdir, data=None, mesh=None):
  """See `smog_jax.evaluation.runner.run` (imported lazily: it pulls in
  orbax and the export/checkpoint modules)."""
  from smog_jax.evaluation import runner
  return runner.run(config, workdir, data=data, mesh=mesh)
