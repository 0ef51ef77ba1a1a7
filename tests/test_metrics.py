"""Metrics against values worked out by hand."""

import numpy as np
import pytest

from dgcnn_jax import metrics


def test_auc_matches_pair_counting():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(200), 2)  # with ties
    labels = rng.integers(0, 2, 200)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    probs = np.stack([1 - scores, scores], 1)
    assert metrics.roc_auc(probs, labels) == pytest.approx(pairs, abs=1e-12)
    fpr, tpr = metrics.roc_curve(scores, labels == 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(pairs, abs=1e-12)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


def test_perfect_and_inverted_classifiers():
    labels = np.array([0, 0, 1, 1])
    good = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    m = metrics.classification_metrics(good, labels)
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["confusion_matrix"] == [[2, 0], [0, 2]]
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.7, 0.9])))
    assert metrics.roc_auc(good[:, ::-1], labels) == 0.0


def test_balanced_accuracy_and_multiclass_auc():
    labels = np.array([0, 0, 0, 1, 2])
    probs = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]], float)
    m = metrics.classification_metrics(probs, labels)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert 0.0 <= m["auc"] <= 1.0
