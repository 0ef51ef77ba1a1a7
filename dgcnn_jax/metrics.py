"""Classification metrics on host arrays (numpy): exact, no sampling.

``probs`` are class probabilities ``[N, C]`` and ``labels`` int ``[N]``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["roc_auc", "roc_curve", "confusion_matrix", "f1_score", "grouped_auc",
           "classification_metrics"]


def _rank_average(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rank_average(np.asarray(scores, np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties counted half). Binary: the score of class 1;
    more classes: the mean one-vs-rest AUC (as MedMNIST reports)."""
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.shape[1] == 2:
        return _binary_auc(probs[:, 1], labels == 1)
    aucs = np.array([_binary_auc(probs[:, c], labels == c) for c in range(probs.shape[1])])
    return float(np.mean(aucs[~np.isnan(aucs)])) if (~np.isnan(aucs)).any() else float("nan")


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold (descending)."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positive[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(p)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(p.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~p).sum(), 1)]
    return fpr, tpr


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[true, predicted]`` counts."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(pred)), 1)
    return cm


def f1_score(cm: np.ndarray) -> float:
    """F1 from a confusion matrix ``cm[true, predicted]``: of class 1 for two classes (the
    positive class, as the literature reports it), else the mean over classes (macro).
    A class never predicted nor present scores 0."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    denominator = cm.sum(axis=0) + cm.sum(axis=1)  # 2 tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(len(cm)), where=denominator > 0)
    return float(f1[1] if len(cm) == 2 else f1.mean())


def grouped_auc(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """ROC AUC over groups (e.g. patients) instead of images: the probabilities of a
    group's images of one class are averaged into one score, so that each (group,
    class) pair counts once whatever its number of images (a patient with images of
    both classes gives one positive and one negative). Single-label only."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    groups = np.asarray(groups)
    if not (len(probs) == len(labels) == len(groups)):
        raise ValueError(f"groups: expected {len(labels)} entries (one per image), got "
                         f"{len(groups)}")
    keys, cell = np.unique(np.stack([np.unique(groups, return_inverse=True)[1].ravel(),
                                     labels]), axis=1, return_inverse=True)
    cell = cell.ravel()
    sums = np.zeros((keys.shape[1], probs.shape[1]))
    np.add.at(sums, cell, probs)
    means = sums / np.bincount(cell)[:, None]
    return roc_auc(means, keys[1])


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, F1 (:func:`f1_score`), ROC AUC, NLL and the
    confusion matrix."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs: expected [N, C] with N = {len(labels)}, got {probs.shape}")
    num_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(pred, labels, num_classes)
    support = cm.sum(axis=1)
    recall = np.divide(np.diag(cm), support, out=np.zeros(num_classes), where=support > 0)
    nll = -np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)))
    return {
        "accuracy": float(np.mean(pred == labels)),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "f1": f1_score(cm),
        "auc": roc_auc(probs, labels),
        "nll": float(nll),
        "confusion_matrix": cm.tolist(),
        "num_examples": int(len(labels)),
    }
