"""Figures of the experiments (matplotlib, Agg backend): each function draws numbers it is
given into a PNG file and computes nothing from a model or dataset.

* :func:`learning_curves`: training loss, validation NLL, accuracy and AUC per epoch.
* :func:`dynamic_diagnostics`: attention entropy and spread, and the share of the banks'
  change common to all K, per dynamic layer over training.
* :func:`roc`: ROC curves of class probabilities (class 1 for binary tasks, one curve
  per class and the macro average otherwise).
* :func:`confusion`: a confusion matrix, counts and row-normalised colours.
* :func:`score_bars`: mean +- std of a score per model, one panel per dataset.
* :func:`roc_and_validation_curves`: test ROC of several runs beside mean validation curves.
* :func:`attention_boxes`: mixing weights of each dynamic layer, per kernel and class.
* :func:`equivariance_grid`: an image under each group element beside feature maps.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np

from dgcnn_jax import metrics

__all__ = ["learning_curves", "dynamic_diagnostics", "roc", "macro_roc", "confusion",
           "score_bars",
           "roc_and_validation_curves", "attention_boxes", "equivariance_grid"]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, dpi=100) -> None:
    fig.tight_layout()
    fig.savefig(pathlib.Path(path), dpi=dpi)
    _pyplot().close(fig)


def learning_curves(history: Sequence[dict], path) -> None:
    """Per-epoch records with ``epoch, train_loss, val_nll, train_accuracy, val_accuracy,
    val_auc``."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(epochs, [h["train_loss"] for h in history], label="train")
    axes[0].plot(epochs, [h["val_nll"] for h in history], label="validation")
    axes[0].set(xlabel="epoch", ylabel="loss (NLL)")
    axes[1].plot(epochs, [h["train_accuracy"] for h in history], label="train accuracy")
    axes[1].plot(epochs, [h["val_accuracy"] for h in history], label="val accuracy")
    axes[1].plot(epochs, [h["val_auc"] for h in history], label="val AUC")
    axes[1].set(xlabel="epoch", ylim=(0, 1.02))
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    _save(fig, path)


def validation_curves(curves: dict[str, Sequence[float]], path,
                      ylabel: str = "validation AUC",
                      panels: dict[str, str] | None = None) -> None:
    """One line per label: a value per epoch (epochs from 1). ``panels`` (label -> panel
    title) draws each panel's labels side by side on a shared axis, for several seeds of
    several runs."""
    plt = _pyplot()
    titles = list(dict.fromkeys(panels.values())) if panels else [None]
    fig, axes = plt.subplots(1, len(titles), figsize=(max(6, 3.2 * len(titles)), 3.5),
                             sharey=True, squeeze=False)
    for ax, title in zip(axes[0], titles):
        for label, values in curves.items():
            if panels is None or panels[label] == title:
                ax.plot(range(1, len(values) + 1), values, label=label)
        ax.set(xlabel="epoch", title=title or "")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set(ylabel=ylabel)
    _save(fig, path)


def dynamic_diagnostics(history: Sequence[dict], path, title: str) -> None:
    """Per-epoch records whose ``dynamic_layers`` list holds, per layer,
    ``attention_entropy``, ``attention_spread`` and ``bank_common_share``."""
    plt = _pyplot()
    records = [h for h in history if "dynamic_layers" in h]
    keys = [("attention_entropy", "attention entropy (nats)"),
            ("attention_spread", "attention spread (std over images)"),
            ("bank_common_share", "bank change common to all K")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    layers = len(records[0]["dynamic_layers"])
    epochs = [h["epoch"] for h in records]
    for ax, (key, label) in zip(axes, keys):
        for i in range(layers):
            values = [h["dynamic_layers"][i].get(key, np.nan) for h in records]
            ax.plot(epochs, values, label=records[-1]["dynamic_layers"][i].get(
                "layer", f"layer {i + 1}"))
        ax.set(xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
    axes[2].axhline(0.9, color="k", lw=0.6, ls=":")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def macro_roc(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve of a binary task (class 1), or the macro average of the one-vs-rest
    curves (true positive rates averaged on the union of their false positive rates)."""
    if probs.shape[1] == 2:
        return metrics.roc_curve(probs[:, 1], labels == 1)
    curves = [metrics.roc_curve(probs[:, c], labels == c) for c in range(probs.shape[1])
              if np.any(labels == c)]
    grid = np.unique(np.concatenate([fpr for fpr, _ in curves]))
    return grid, np.mean([np.interp(grid, fpr, tpr) for fpr, tpr in curves], axis=0)


def roc(probs: np.ndarray, labels: np.ndarray, path, title: str,
        class_names: Sequence[str] = ()) -> None:
    """ROC of class probabilities ``[N, C]`` against integer labels ``[N]``."""
    fig, ax = _pyplot().subplots(figsize=(4.5, 4.5))
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    for c in classes:
        fpr, tpr = metrics.roc_curve(probs[:, c], labels == c)
        name = class_names[c] if c < len(class_names) else f"class {c}"
        ax.plot(fpr, tpr, lw=1, label=f"{name} (AUC {float(np.trapezoid(tpr, fpr)):.3f})")
    if probs.shape[1] > 2:
        fpr, tpr = macro_roc(probs, labels)
        ax.plot(fpr, tpr, "k", lw=2, label=f"macro average (AUC "
                f"{metrics.roc_auc(probs, labels):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate")
    ax.set(title=title)
    ax.legend(loc="lower right", fontsize=7 if probs.shape[1] > 2 else None)
    _save(fig, path)


def confusion(cm: Sequence[Sequence[int]], path, title: str,
              class_names: Sequence[str] = ()) -> None:
    """Confusion matrix ``cm[true, predicted]``: counts, colours normalised per true class."""
    plt = _pyplot()
    cm = np.asarray(cm)
    n = len(cm)
    names = [class_names[i] if i < len(class_names) else str(i) for i in range(n)]
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    _save(fig, path)


def score_bars(rows: Sequence[dict], path, *, key: str = "auc",
               label: str = "test AUC") -> None:
    """Bars of ``row[key + "_mean"]`` with ``row[key + "_std"]`` per model, one panel
    per dataset (rows carry ``dataset`` and ``model``)."""
    plt = _pyplot()
    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.5),
                             squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rs = [r for r in rows if r["dataset"] == dataset]
        ax.bar(range(len(rs)), [r[f"{key}_mean"] for r in rs],
               yerr=[r[f"{key}_std"] for r in rs], capsize=4)
        ax.set_xticks(range(len(rs)), [r["model"] for r in rs], rotation=30, ha="right")
        low = min(r[f"{key}_mean"] - r[f"{key}_std"] for r in rs)
        ax.set(ylabel=f"{label} (mean +- std)", title=dataset,
               ylim=(max(0.0, low - 0.05), 1.0))
    _save(fig, path)


def roc_and_validation_curves(curves: Sequence[dict], path, title: str) -> None:
    """Left: test ROC per entry (macro average for more than 2 classes); right: its mean
    validation AUC per epoch.

    Each entry: ``label`` (the model), ``seed``, ``probs [N, C]`` and ``labels [N]`` (that
    seed's test split) and ``val_curves`` (validation AUC per epoch of every seed; cut to
    the shortest).
    """
    fig, (roc_ax, curve_ax) = _pyplot().subplots(1, 2, figsize=(9, 3.8))
    for entry in curves:
        fpr, tpr = macro_roc(entry["probs"], entry["labels"])
        roc_ax.plot(fpr, tpr, label=f"{entry['label']} (seed {entry['seed']})")
        n = min(len(c) for c in entry["val_curves"])
        curve_ax.plot(range(1, n + 1), np.mean([c[:n] for c in entry["val_curves"]], axis=0),
                      label=entry["label"])
    roc_ax.plot([0, 1], [0, 1], "k:", lw=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title=f"{title}: test ROC")
    curve_ax.set(xlabel="epoch", ylabel="validation AUC (mean over seeds)")
    for ax in (roc_ax, curve_ax):
        ax.legend(fontsize=7)
    _save(fig, path)


def attention_boxes(weights: Sequence[np.ndarray], labels: np.ndarray, path,
                    title: str, names: Sequence[str] | None = None) -> None:
    """Box plots of the mixing weights ``[N, K]`` of each layer, per kernel and class."""
    plt = _pyplot()
    classes = sorted(set(labels.tolist()))
    k = weights[0].shape[1]
    fig, axes = plt.subplots(1, len(weights), figsize=(2.2 * len(weights), 3), sharey=True)
    axes = np.atleast_1d(axes)
    width = 0.8 / len(classes)
    for i, (ax, w) in enumerate(zip(axes, weights)):
        for j, c in enumerate(classes):
            pos = np.arange(k) + (j - (len(classes) - 1) / 2) * width
            parts = ax.boxplot(list(w[labels == c].T), positions=pos, widths=width * 0.9,
                               patch_artist=True, showfliers=False)
            for patch in parts["boxes"]:
                patch.set_facecolor(f"C{j}")
        ax.set_xticks(range(k), [f"k{n}" for n in range(k)])
        ax.set_title(names[i] if names else f"layer {i + 1}", fontsize=9)
        ax.axhline(1.0 / k, color="k", lw=0.6, ls=":")
    axes[0].set_ylabel("attention weight (test images)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{j}") for j in range(len(classes))]
    fig.legend(handles, [f"class {c}" for c in classes], loc="upper right", fontsize=7)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def equivariance_grid(rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str],
                      column_titles: Sequence[str], path, title: str, scale: float) -> None:
    """A grid of 2-D panels: the first column in grey, the others on ``[0, scale]``."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), len(column_titles),
                             figsize=(1.6 * len(column_titles), 1.6 * len(rows)), squeeze=False)
    for g, panels in enumerate(rows):
        for col, (ax, img) in enumerate(zip(axes[g], panels)):
            kw = {"cmap": "gray"} if col == 0 else {"cmap": "viridis", "vmin": 0,
                                                     "vmax": scale}
            ax.imshow(np.asarray(img), **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if g == 0:
                ax.set_title(column_titles[col], fontsize=8)
        axes[g][0].set_ylabel(row_labels[g], fontsize=8)
    fig.suptitle(title, fontsize=8)
    _save(fig, path, dpi=90)
