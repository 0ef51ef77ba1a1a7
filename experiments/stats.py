"""Statistics over seeds and test images: intervals, paired tests, paired bootstrap.

All functions take per-seed values or per-image predictions and return plain floats, so
that they can be written to JSON as measured. Two-sided tests throughout.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mean_interval", "paired_t", "holm", "paired_bootstrap", "weighted_auc",
           "paired_bootstrap_auc"]


def mean_interval(values, confidence: float = 0.95) -> dict:
    """Mean, sample std and the Student-t interval of the mean of ``values`` (one per
    seed); with one value the interval is that value and the std 0."""
    from scipy import stats

    values = np.asarray(values, np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values: expected a non-empty 1-D sequence, got shape "
                         f"{values.shape}")
    mean = float(values.mean())
    if values.size == 1:
        return {"n": 1, "mean": mean, "std": 0.0, "low": mean, "high": mean}
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, values.size - 1)) * std / np.sqrt(values.size)
    return {"n": int(values.size), "mean": mean, "std": std, "low": mean - half,
            "high": mean + half}


def paired_t(a, b) -> dict:
    """Paired t-test of ``a - b`` (one pair per seed): mean difference and p-value
    (``None`` with fewer than 2 pairs or no spread in the differences)."""
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a, b: expected two 1-D sequences of equal length (one value per "
                         f"seed), got shapes {a.shape} and {b.shape}")
    diff = a - b
    p = None
    if a.size >= 2 and np.ptp(diff) > 0:
        p = float(stats.ttest_rel(a, b).pvalue)
    return {"n": int(a.size), "mean_difference": float(diff.mean()), "p": p}


def holm(pvalues) -> list:
    """Holm's step-down adjustment of a family of p-values (several comparisons against
    one reference): the i-th smallest of m is multiplied by m - i (i from 0), made
    non-decreasing in that order and capped at 1. ``None`` entries (no test) stay
    ``None`` and do not count in m; the order of the input is kept."""
    pvalues = list(pvalues)
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    if any(not 0.0 <= p <= 1.0 for p, _ in tested):
        raise ValueError(f"pvalues: expected values in [0, 1] or None, got {pvalues}")
    adjusted, running = list(pvalues), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_bootstrap(correct_a, correct_b, *, resamples: int = 10_000, seed: int = 0,
                     chunk: int = 500) -> dict:
    """Paired bootstrap over test images of the difference in accuracy, A minus B.

    ``correct_a`` and ``correct_b``: ``[seeds, images]`` (or ``[images]``), 1 where a
    model's prediction for that image was right; seed ``s`` of A is paired with seed ``s``
    of B. Each resample draws the test images with replacement (the same draw for both
    models and every seed) and takes the difference of the accuracies averaged over seeds.
    Returns the observed difference, the 95% percentile interval and the two-sided p-value
    ``2 * min(P(d <= 0), P(d >= 0))`` over the resamples (at least ``1 / resamples``).
    """
    a = np.atleast_2d(np.asarray(correct_a, np.float64))
    b = np.atleast_2d(np.asarray(correct_b, np.float64))
    if a.shape != b.shape:
        raise ValueError(f"correct_a, correct_b: expected equal shapes [seeds, images], got "
                         f"{a.shape} and {b.shape}")
    per_image = (a - b).mean(axis=0)  # the seed-averaged difference on each image
    n = per_image.size
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n), dtype=np.int64)
        draws.append(per_image[idx].mean(axis=1))
    return _bootstrap_summary(np.concatenate(draws), per_image.mean(), n, a.shape[0])


def _bootstrap_summary(d: np.ndarray, observed, images: int, seeds: int) -> dict:
    """The observed difference, the 95% percentile interval of the resampled ones ``d``
    and the two-sided p-value ``2 * min(P(d <= 0), P(d >= 0))`` (at least ``1 / len(d)``)."""
    p = 2 * min(np.mean(d <= 0), np.mean(d >= 0))
    return {"images": int(images), "seeds": int(seeds), "difference": float(observed),
            "low": float(np.quantile(d, 0.025)), "high": float(np.quantile(d, 0.975)),
            "p": float(min(1.0, max(p, 1.0 / d.size))), "resamples": int(d.size)}


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` ``[n]`` for the boolean labels ``positive`` ``[n]`` under each
    row of image weights ``weights`` ``[r, n]`` (a bootstrap resample's counts): the
    weighted probability that a positive scores above a negative, ties counting one half.
    One sort for all rows. Returns ``[r]``."""
    order = np.argsort(scores, kind="stable")
    values, first = np.unique(scores[order], return_index=True)
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], first, axis=1)
    neg = np.add.reduceat(w * ~positive[order], first, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def _auc_rows(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC (two classes) or macro one-vs-rest AUC under each row of ``weights``."""
    if probs.shape[1] == 2:
        return weighted_auc(probs[:, 1], labels == 1, weights)
    return np.mean([weighted_auc(probs[:, c], labels == c, weights)
                    for c in range(probs.shape[1])], axis=0)


def paired_bootstrap_auc(probs_a, probs_b, labels, *, resamples: int = 10_000, seed: int = 0,
                         chunk: int = 500) -> dict:
    """Paired bootstrap over test images of the difference in AUC (macro one-vs-rest for
    more than two classes), A minus B, averaged over seeds.

    ``probs_a``, ``probs_b``: ``[seeds, images, classes]``, seed ``s`` of A paired with seed
    ``s`` of B; ``labels``: ``[images]``. Each resample draws the images with replacement
    (the same draw for both models and every seed; a draw without both classes of a pair
    is drawn again, which at test-set sizes does not happen). Returns what
    :func:`paired_bootstrap` returns, for AUC."""
    a, b = np.asarray(probs_a, np.float64), np.asarray(probs_b, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if a.shape != b.shape or a.ndim != 3 or a.shape[1] != labels.size:
        raise ValueError(f"probs_a, probs_b: expected equal shapes [seeds, images, "
                         f"classes] with images = {labels.size} labels, got {a.shape} and "
                         f"{b.shape}")
    ones = np.ones((1, labels.size))
    observed = np.mean([_auc_rows(x, labels, ones)[0] - _auc_rows(y, labels, ones)[0]
                        for x, y in zip(a, b)])
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, resamples, chunk):
        weights = rng.multinomial(labels.size, np.full(labels.size, 1 / labels.size),
                                  size=min(chunk, resamples - start)).astype(np.float64)
        draws.append(np.mean([_auc_rows(x, labels, weights) - _auc_rows(y, labels, weights)
                              for x, y in zip(a, b)], axis=0))
    return _bootstrap_summary(np.concatenate(draws), observed, labels.size, a.shape[0])
