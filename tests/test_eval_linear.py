"""The linear probe on frozen features."""

import jax
import numpy as np
import optax

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
