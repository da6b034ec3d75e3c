"""Times the grouping math: momentum_update and k-means, against plain matmul.

  python benchmarks/grouping.py
  python benchmarks/grouping.py --kmeans_rows=1281167 --repeats=1

momentum_update: global batch 4096, H = 3 heads x K = 3000 groups, D = 128
(assignment included, as in the train step). kmeans: N = 100k rows, K = 3000,
10 iterations. "matmul roofline": the same N x D x K score matmul + argmax
alone, jitted: k-means can be no faster than 10 of those.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags

from smog_jax import grouping

_BATCH = flags.DEFINE_integer('batch', 4096, 'Global batch of momentum_update.')
_HEADS = flags.DEFINE_integer('heads', 3, 'Heads.')
_GROUPS = flags.DEFINE_integer('groups', 3000, 'Groups per head.')
_DIM = flags.DEFINE_integer('dim', 128, 'Feature dimension.')
_ROWS = flags.DEFINE_integer('kmeans_rows', 100_000, 'k-means rows.')
_ITERS = flags.DEFINE_integer('kmeans_iters', 10, 'k-means iterations.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls (best is kept).')


def _best_time(fn, *args) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm up
  best = float('inf')
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def main(argv):
  del argv
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  h, k, d = _HEADS.value, _GROUPS.value, _DIM.value
  centroids = grouping.l2_normalize(jax.random.normal(keys[0], (h, k, d)))
  feats = grouping.l2_normalize(
      jax.random.normal(keys[1], (h, _BATCH.value, d)))

  @jax.jit
  def update(c, x):
    def one(c, x):
      return grouping.momentum_update(c, x, grouping.assign(x, c), 0.99)
    return jax.vmap(one)(c, x)

  t_update = _best_time(update, centroids, feats)
  bank = grouping.l2_normalize(jax.random.normal(keys[2], (_ROWS.value, d)))
  t_kmeans = _best_time(
      lambda x: grouping.kmeans(x, k, _ITERS.value, keys[0]), bank)
  scores = jax.jit(lambda x, c: jnp.argmax(x @ c.T, axis=-1))
  t_matmul = _best_time(scores, bank, centroids[0])
  flops = 2 * _ROWS.value * k * d

  print(f'backend={jax.default_backend()} devices={jax.device_count()} '
        f'({jax.devices()[0].device_kind})')
  print(f'momentum_update  B={_BATCH.value} H={h} K={k} D={d}: '
        f'{1e3 * t_update:9.2f} ms/call')
  print(f'kmeans           N={_ROWS.value} K={k} iters={_ITERS.value}: '
        f'{1e3 * t_kmeans:9.1f} ms/call  '
        f'({_ITERS.value * flops / t_kmeans / 1e9:.1f} GFLOP/s)')
  print(f'matmul roofline  one N x D x K score matmul + argmax: '
        f'{1e3 * t_matmul:9.1f} ms  ({flops / t_matmul / 1e9:.1f} GFLOP/s); '
        f'kmeans / ({_ITERS.value} x matmul) = '
        f'{t_kmeans / (_ITERS.value * t_matmul):.2f}')


if __name__ == '__main__':
  app.run(main)
