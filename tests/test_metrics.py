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
    # F1 macro over the three classes: class 0 2/(2+1+0)... by 2tp / (2tp + fp + fn)
    f1 = [2 * 2 / (2 * 2 + 0 + 1), 2 * 1 / (2 * 1 + 2 + 0), 0.0]
    assert m["f1"] == pytest.approx(np.mean(f1))


def test_f1_of_the_positive_class():
    # tp 3, fp 1, fn 2 for class 1: F1 = 6 / (6 + 1 + 2)
    cm = np.array([[5, 1], [2, 3]])
    assert metrics.f1_score(cm) == pytest.approx(6 / 9)
    assert metrics.f1_score(cm[::-1, ::-1]) == pytest.approx(10 / 13)  # class 1 = old 0
    assert metrics.f1_score(np.array([[4, 0], [0, 0]])) == 0.0  # no positive at all
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    probs = np.zeros((11, 2))
    probs[np.arange(11), [1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0]] = 1.0
    assert metrics.classification_metrics(probs, labels)["f1"] == pytest.approx(6 / 9)


def test_grouped_auc_counts_each_group_and_class_once():
    # one image per (group, class): the grouped AUC is the image AUC
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.45, 0.55]])
    labels = np.array([0, 1, 0, 1])
    groups = np.array([1, 1, 2, 2])
    assert metrics.grouped_auc(probs, labels, groups) == metrics.roc_auc(probs, labels)
    # a group's many images of one class count once: 9 copies of a badly ranked image of
    # group 3 drag the image AUC down, not the grouped one (their mean is that image)
    many = np.concatenate([probs, np.repeat([[0.9, 0.1]], 9, axis=0)])
    many_labels = np.concatenate([labels, np.ones(9, int)])
    many_groups = np.concatenate([groups, np.full(9, 3)])
    grouped = metrics.grouped_auc(many, many_labels, many_groups)
    assert grouped == pytest.approx(metrics.roc_auc(
        np.concatenate([probs, [[0.9, 0.1]]]), np.concatenate([labels, [1]])))
    assert metrics.roc_auc(many, many_labels) < grouped
    # averaged within a (group, class) cell: [0.2, 0.6] -> 0.4 against group 2's 0.55
    avg = metrics.grouped_auc(np.array([[0.8, 0.2], [0.4, 0.6], [0.45, 0.55]]),
                              np.array([1, 1, 0]), np.array(["a", "a", "b"]))
    assert avg == 0.0  # the positive cell (0.4) ranks below the negative (0.55)
    with pytest.raises(ValueError, match="groups: expected 4 entries"):
        metrics.grouped_auc(probs, labels, groups[:3])
