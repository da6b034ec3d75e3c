"""The linear probe on frozen features."""

import jax
import numpy as np
import optax
import pytest

from smog_jax import sharding
from smog_jax.evaluation import linear


def _blobs(rng, n, centres):
  labels = rng.integers(0, len(centres), n)
  x = centres[labels] + 0.5 * rng.normal(size=(n, centres.shape[1]))
  return (x * 3.0 + 5.0).astype(np.float32), labels  # Off-centre, scaled.


def test_fits_linearly_separable_data():
  rng = np.random.default_rng(0)
  centres = 3.0 * rng.normal(size=(4, 16))
  train_x, train_y = _blobs(rng, 300, centres)  # 300 % 64 != 0: padding.
  test_x, test_y = _blobs(rng, 200, centres)
  mesh = sharding.make_mesh()
  logged = []
  cfg = linear.LinearConfig(epochs=8, batch_size=64, learning_rate=0.3,
                            momentum=0.9, weight_decay=1e-6,
                            standardize=True, seed=1, eval_batch_size=48)
  state = linear.fit_linear(train_x, train_y, 4, cfg, mesh,
                            log_fn=logged.append)
  result = linear.evaluate_probe(state, test_x, test_y, mesh, batch_size=48)
  assert result['top1'] > 0.97
  assert result['top5'] == 1.0  # 4 classes: top-5 is every class.
  assert result['num_examples'] == 200
  assert [r['epoch'] for r in logged] == list(range(1, 9))
  assert logged[-1]['loss'] < logged[0]['loss']
  assert int(state.step) == 8 * 5


def test_masked_rows_do_not_count():
  rng = np.random.default_rng(0)
  mean, std = rng.normal(size=5), rng.uniform(0.5, 2.0, 5)
  state = linear.init_probe(jax.random.key(0), 3, mean.astype(np.float32),
                            std.astype(np.float32), optax.sgd(0.1))
  # Logits of order one: every row's loss differs from the others'.
  state = state.replace(params=jax.tree.map(
      lambda p: rng.normal(size=p.shape).astype(np.float32), state.params))
  x = rng.normal(size=(4, 5)).astype(np.float32)
  y = np.array([0, 1, 2, 0])
  loss, metrics = jax.jit(linear.probe_loss_and_metrics)(
      state.params, state, x, y, np.array([True, True, False, False]))
  # NumPy: cross-entropy and top-1 of the two real rows only.
  head = state.params['Dense_0']
  logits = ((x[:2] - mean) / std) @ np.asarray(head['kernel']) + head['bias']
  log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(loss, -log_softmax[[0, 1], y[:2]].mean(),
                             rtol=1e-5)
  assert metrics['count'] == 2
  assert metrics['train_top1'] == np.mean(logits.argmax(1) == y[:2])


def _one_sgd_step(x, y, params, num_classes, lr, wd):
  """NumPy: one SGD step (first step: no momentum history) of the head."""
  w, b = (np.asarray(params['Dense_0'][k], np.float64)
          for k in ('kernel', 'bias'))
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  dlogits = (p - np.eye(num_classes)[y]) / len(y)
  return w - lr * (x.T @ dlogits + wd * w), b - lr * (dlogits.sum(0) + wd * b)


@pytest.mark.parametrize('standardize', [False, True])
def test_unstandardised_probe_trains_on_the_raw_features(standardize):
  """`standardize=False` (the ImageNet variants): the head's input is the
  features themselves, through the loop `fit_linear` runs."""
  rng = np.random.default_rng(0)
  centres = 3.0 * rng.normal(size=(3, 8))
  x, y = _blobs(rng, 64, centres)  # Off-centre and scaled: not standard.
  cfg = linear.LinearConfig(epochs=1, batch_size=64, learning_rate=0.3,
                            momentum=0.9, weight_decay=1e-3,
                            standardize=standardize, seed=2,
                            eval_batch_size=64)
  state = linear.fit_linear(x, y, 3, cfg, sharding.make_mesh())
  assert int(state.step) == 1  # One full batch: one step.
  init = linear.LinearHead(3).init(jax.random.key(cfg.seed),
                                   np.zeros((1, 8), np.float32))['params']
  want_w, want_b = _one_sgd_step(x.astype(np.float64), y, init, 3,
                                 cfg.learning_rate, cfg.weight_decay)
  head = state.params['Dense_0']
  raw = (np.allclose(head['kernel'], want_w, rtol=1e-4, atol=1e-6) and
         np.allclose(head['bias'], want_b, rtol=1e-4, atol=1e-6))
  assert raw == (not standardize)  # The check tells the two apart.
  if not standardize:
    np.testing.assert_array_equal(state.mean, 0.0)
    np.testing.assert_array_equal(state.std, 1.0)
    features = jax.numpy.asarray(x)
    logits = linear.probe_logits(state.params, state.mean, state.std,
                                 features)
    # The head on the features as they are, bit for bit, and in NumPy.
    np.testing.assert_array_equal(logits, linear.LinearHead(3).apply(
        {'params': state.params}, features))
    np.testing.assert_allclose(
        logits, x.astype(np.float64) @ np.asarray(head['kernel'], np.float64)
        + np.asarray(head['bias']), rtol=1e-5, atol=1e-5)
