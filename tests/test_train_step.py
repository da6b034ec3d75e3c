"""The fused SMoG train step against independent re-derivations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import step_fixtures as fx
from smog_jax import augment, sharding, train
from smog_jax.train_state import state_sharding

tree_leaves_with_path = jax.tree_util.tree_leaves_with_path


def _np(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _run(mesh, state, batches, network, tx, step_config):
  # From host copies: the jitted step donates (deletes) its input state.
  state = jax.device_put(_np(state), state_sharding(state, mesh))
  step_fn = train.jit_train_step(network, tx, step_config, mesh, state)
  metrics = []
  for b in batches:
    state, m = step_fn(state, sharding.shard_host_batch(b, mesh))
    metrics.append(_np(m))
  return _np(state), metrics


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _forward(network, params, stats, images):
  """Train-mode forward of [B, n, ...] crops, outputs [n, B, D]."""
  b, n = images.shape[:2]
  apply = jax.jit(functools.partial(
      network.apply, train=True, with_predictor='predictor' in params,
      mutable=['batch_stats']))
  out, _ = apply({'params': params, 'batch_stats': stats},
                 images.reshape((b * n,) + images.shape[2:]))
  return {k: np.swapaxes(np.asarray(v).reshape(b, n, -1), 0, 1)
          for k, v in out.items()}


def _backbone(network, params, stats, *crops):
  """Train-mode backbone features of [B, n, ...] crops, `[B * n, F]`, and
  the backbone's new statistics; several crop sets in one call (BatchNorm
  pooled over them: tests/test_backbone_bn.py), features concatenated."""
  apply = jax.jit(functools.partial(network.apply, train=True,
                                    method='features',
                                    mutable=['batch_stats']))
  merged = tuple(x.reshape((-1,) + x.shape[2:]) for x in crops)
  out, new = apply({'params': params, 'batch_stats': stats},
                   merged if len(merged) > 1 else merged[0])
  features = np.concatenate(out) if len(merged) > 1 else np.asarray(out)
  return features, _np(new['batch_stats']['backbone'])


def _numpy_head(params, x, output_norm):
  """Dense - BN - ReLU - Dense [- BN without scale or bias] in NumPy, BN in
  train mode: the statistics of all rows of `x`."""
  def batch_norm(y, affine=None):
    y = (y - y.mean(axis=0)) / np.sqrt(y.var(axis=0) + 1e-5)
    return y if affine is None else y * affine['scale'] + affine['bias']
  h = x @ params['Dense_0']['kernel'] + params['Dense_0']['bias']
  h = np.maximum(batch_norm(h, params['BatchNorm_0']), 0.0)
  y = h @ params['Dense_1']['kernel'] + params['Dense_1']['bias']
  return batch_norm(y) if output_norm else y


def _online_branch(network, params, stats, large, small):
  """(projections [nL, B, D], predictions [nL + nS, B, D]) of the online
  crops: the backbone per resolution (or pooled), the heads once over every
  crop (their BatchNorm pools large and small crops, as the reference's
  multi-crop)."""
  (b, n_large), n_small = large.shape[:2], small.shape[1]
  if network.pooled_backbone_bn:
    features, _ = _backbone(network, params, stats, large, small)
  else:
    features = np.concatenate([_backbone(network, params, stats, large)[0],
                               _backbone(network, params, stats, small)[0]])
  z = _numpy_head(params['projector'], features, output_norm=True)
  p = _numpy_head(params['predictor'], z, output_norm=False)
  split = lambda x, n: np.swapaxes(x.reshape(b, n, -1), 0, 1)
  rows = b * n_large
  return split(z[:rows], n_large), np.concatenate(
      [split(p[:rows], n_large), split(p[rows:], n_small)])


def _log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize('backbone_bn', ['per_resolution', 'pooled'])
def test_step_matches_numpy_rederivation_of_the_spec(backbone_bn):
  config = fx.tiny_config()
  config.model.backbone_bn = backbone_bn
  network, tx, step_config, state = fx.build(config)
  b = fx.batch()
  old = _np(state)
  new, (metrics,) = _run(sharding.make_mesh(jax.devices()[:1]), state, [b],
                         network, tx, step_config)
  beta = 0.9  # group momentum at step 0 of the tiny config
  # Independent forward passes with the old parameters.
  tgt = _forward(network, old.target_params, old.target_batch_stats,
                 fx.pixels(b['target_large']))
  z_large, p = _online_branch(network, old.params, old.batch_stats,
                              fx.pixels(b['online_large']),
                              fx.pixels(b['online_small']))
  z_target = _normalize(tgt['projection'])  # [T, B, D]
  z_large, p = _normalize(z_large), _normalize(p)  # [2, B, D], [6, B, D]
  losses = []
  for h in range(fx.NUM_HEADS):
    c_old = old.centroids[h]
    y = np.argmax(z_target @ c_old.T, axis=-1)  # [T, B], old centroids
    z = z_large[h % 2]
    a = np.argmax(z @ c_old.T, axis=-1)
    c_new = np.empty_like(c_old)
    for k in range(fx.NUM_GROUPS):
      mean = z[a == k].mean(axis=0) if np.any(a == k) else c_old[k]
      v = beta * c_old[k] + (1 - beta) * mean
      c_new[k] = v / np.linalg.norm(v)
    np.testing.assert_allclose(new.centroids[h], c_new, rtol=1e-4, atol=1e-5)
    logp = _log_softmax(p @ c_new.T / 0.1)  # [V, B, K], updated centroids
    for v in range(6):
      for t in range(2):
        losses.append(-logp[v, np.arange(p.shape[1]), y[t]])
  np.testing.assert_allclose(metrics['loss'], np.mean(losses), rtol=1e-4)
  assert metrics['group_momentum'] == pytest.approx(beta)
  assert int(new.step) == 1
  # The backbone's running statistics: the large crops' (per resolution),
  # or both resolutions' pooled.
  large, small = (fx.pixels(b[k]) for k in ('online_large', 'online_small'))
  crops = (large, small) if backbone_bn == 'pooled' else (large,)
  _, want = _backbone(network, old.params, old.batch_stats, *crops)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-6), new.batch_stats['backbone'], want)


def test_target_moves_toward_online_by_exactly_the_ema_rule():
  network, tx, step_config, state = fx.build()
  old = _np(state)
  new, _ = _run(sharding.make_mesh(jax.devices()[:1]), state,
                [fx.batch(seed=1)], network, tx, step_config)
  m = 0.9
  for part in ('backbone', 'projector'):
    want = jax.tree.map(lambda t, o: m * t + (1 - m) * o,
                        old.target_params[part], new.params[part])
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                   atol=1e-7),
                 new.target_params[part], want)
  # The online network did move, so the rule is not trivially satisfied, and
  # the target has no predictor.
  assert 'predictor' not in new.target_params
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), new.params,
                       old.params)
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_no_gradient_reaches_the_target_network():
  # The loss depends on the target only through argmax targets; the update
  # of the target is the EMA alone. Check: the optimiser sees only online
  # parameters, and dL/d(target) is exactly zero.
  network, tx, step_config, state = fx.build()
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(
      tx.init(state.params))
  b = jax.tree.map(jnp.asarray, fx.batch(seed=2))

  def loss_of_target(target_params):
    _, metrics = train.train_step(state.replace(target_params=target_params),
                                  b, network=network, tx=tx,
                                  config=step_config)
    return metrics['loss']

  grads = jax.jit(jax.grad(loss_of_target))(state.target_params)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))


def test_one_device_and_eight_devices_give_the_same_state():
  assert jax.device_count() == 8
  network, tx, step_config, state = fx.build(bank_rows=32)
  batches = [fx.batch(seed=s, num_examples=32) for s in range(3)]
  one, m1 = _run(sharding.make_mesh(jax.devices()[:1]), state, batches,
                 network, tx, step_config)
  eight, m8 = _run(sharding.make_mesh(), state, batches, network, tx,
                   step_config)
  for (path, a), b in zip(tree_leaves_with_path(one), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5,
                               err_msg=jax.tree_util.keystr(path))
  for a, b in zip(m1, m8):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=k)


def test_loss_falls_on_a_fixed_batch_and_centroids_stay_unit_norm():
  network, tx, step_config, state = fx.build()
  b = fx.batch(seed=3)
  final, metrics = _run(sharding.make_mesh(), state, [b] * 12, network, tx,
                        step_config)
  losses = [m['loss'] for m in metrics]
  assert np.mean(losses[-3:]) < losses[0] - 0.05, losses
  np.testing.assert_allclose(np.linalg.norm(final.centroids, axis=-1), 1.0,
                             rtol=1e-5)


def test_memory_bank_rows_are_the_online_large_projections():
  # With the reference augmentation: the step feeds the network exactly the
  # views `augment.train_views` makes (tested against NumPy on its own).
  network, tx, step_config, state = fx.build(bank_rows=40,
                                             spec=fx.REFERENCE)
  b = fx.batch(seed=4, num_examples=40)
  old = _np(state)
  new, _ = _run(sharding.make_mesh(), state, [b], network, tx, step_config)
  views = augment.train_views(b, jnp.int32(0), fx.REFERENCE)
  assert not np.allclose(views['online_large'], fx.pixels(b['online_large']))
  z = _normalize(_online_branch(network, old.params, old.batch_stats,
                                np.asarray(views['online_large']),
                                np.asarray(views['online_small']))[0])
  np.testing.assert_allclose(new.memory_bank[:, b['index']], z, rtol=1e-4,
                             atol=1e-5)
  untouched = np.setdiff1d(np.arange(40), b['index'])
  assert np.all(new.memory_bank[:, untouched] == 0)


def test_centroid_gradient_switch_lets_gradients_through_the_centroids():
  cfg = fx.tiny_config(centroid_gradient=True)
  network, tx, step_config, state = fx.build(cfg)
  _, tx0, step_config0, _ = fx.build()
  b = jax.tree.map(jnp.asarray, fx.batch(seed=5))
  step = lambda t, c: jax.jit(functools.partial(
      train.train_step, network=network, tx=t, config=c))(state, b)
  s_detached, m_detached = step(tx0, step_config0)
  s_flowing, m_flowing = step(tx, step_config)
  # Same forward value, different gradients on the projector.
  np.testing.assert_allclose(m_detached['loss'], m_flowing['loss'], rtol=1e-5)
  diff = jax.tree.map(lambda a, c: float(jnp.abs(a - c).max()),
                      s_detached.params['projector'],
                      s_flowing.params['projector'])
  assert max(jax.tree.leaves(diff)) > 1e-6
