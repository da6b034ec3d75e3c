"""Weighted kNN against an independent NumPy re-derivation."""

import numpy as np
import pytest

from smog_jax import sharding
from smog_jax.evaluation import knn


def numpy_knn(train, train_labels, test, num_classes, k, temperature):
  """Straightforward loops: cosine similarity, stable top-k, exp(s/T) votes."""
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  test = test / np.linalg.norm(test, axis=1, keepdims=True)
  preds = []
  for row in test:
    sims = train @ row
    # Stable sort on -sim: equal similarities keep the lower train index.
    nearest = np.argsort(-sims, kind='stable')[:k]
    votes = np.zeros(num_classes)
    for j in nearest:
      votes[train_labels[j]] += np.exp(sims[j] / temperature)
    preds.append(int(np.argmax(votes)))  # Lowest class on a tie.
  return np.array(preds)


def test_weights_decide_against_majority():
  # One class-0 neighbour at similarity 1 vs two class-1 neighbours at
  # cos(60 deg) = 0.5: exp(1/T) against 2 exp(0.5/T).
  train = np.array([[1.0, 0.0], [0.5, np.sqrt(0.75)], [0.5, -np.sqrt(0.75)],
                    [-1.0, 0.0]], np.float32)
  labels = np.array([0, 1, 1, 2])
  test = np.array([[1.0, 0.0]], np.float32)
  # T = 0.07: exp(14.3) >> 2 exp(7.1): the single close neighbour wins.
  assert knn.knn_classify(train, labels, test, 3, k=3,
                          temperature=0.07)[0, 0] == 0
  # T = 10: weights nearly equal, the majority (2 votes) wins.
  assert knn.knn_classify(train, labels, test, 3, k=3,
                          temperature=10.0)[0, 0] == 1
  # k = 1: only the nearest votes.
  assert knn.knn_classify(train, labels, test, 3, k=1,
                          temperature=10.0)[0, 0] == 0


def test_ties_follow_lowest_index_and_class():
  # Rows 0-3 are identical (exact similarity ties); with k = 2 the two lowest
  # indices (labels 3 and 1) are taken, not rows 2-3 (labels 0, 0); the two
  # single votes tie and the lower class (1) wins.
  train = np.array([[1, 1], [1, 1], [1, 1], [1, 1], [-1, 0]], np.float32)
  labels = np.array([3, 1, 0, 0, 2])
  test = np.array([[2.0, 2.0]], np.float32)
  got = knn.knn_classify(train, labels, test, 4, k=2, top=4)
  assert got[0, 0] == 1
  assert got[0, 1] == 3  # Equal vote, next class id.
  assert numpy_knn(train, labels, test, 4, 2, 0.07)[0] == 1
  mesh = sharding.make_mesh()
  assert knn.knn_classify(train, labels, test, 4, k=2, mesh=mesh)[0, 0] == 1


@pytest.mark.parametrize('use_mesh', [False, True])
def test_matches_numpy_on_random_data(use_mesh):
  rng = np.random.default_rng(0)
  # 101 train rows: not a multiple of 8 devices (padding path); a few
  # duplicated rows create similarity ties.
  train = rng.normal(size=(101, 12)).astype(np.float32)
  train[50:55] = train[10]
  labels = rng.integers(0, 6, 101)
  test = rng.normal(size=(29, 12)).astype(np.float32)
  test[:3] = train[10] * 3.0
  test_labels = rng.integers(0, 6, 29)
  mesh = sharding.make_mesh() if use_mesh else None
  expected = numpy_knn(train, labels, test, 6, 20, 0.07)
  # chunk_size 4 does not divide 29: the padded last chunk is exercised.
  got = knn.knn_classify(train, labels, test, 6, k=20, temperature=0.07,
                         mesh=mesh, chunk_size=4)
  np.testing.assert_array_equal(got[:, 0], expected)
  top1 = knn.knn_top1(train, labels, test, test_labels, 6, mesh=mesh)
  assert top1 == pytest.approx(np.mean(expected == test_labels))
  acc = knn.knn_accuracy(train, labels, test, test_labels, 6, mesh=mesh)
  assert acc['top1'] == pytest.approx(top1)
  assert acc['top5'] >= acc['top1']


def test_k_larger_than_train_set():
  train = np.eye(3, dtype=np.float32)
  labels = np.array([0, 1, 1])
  test = np.array([[1.0, 0.1, 0.0]], np.float32)
  assert knn.knn_top1(train, labels, test, np.array([0]), 2, k=20) == 1.0
