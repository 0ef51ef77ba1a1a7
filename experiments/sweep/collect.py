"""What a finished run says, as one flat summary: the one reader of a sweep's run folders.

:func:`summary` reads ``results.json`` and ``metrics.jsonl`` (and ``eval_test.json``,
the D4-robustness scores, where present) of a run and returns the fields every table and
results file of the sweep commands uses.
"""

from __future__ import annotations

import json

import numpy as np

from dgcnn_jax import models
from experiments.configs import Config, model_kwargs
from experiments.training import Workdir

from .plan import Task
from .registry import EXTRA_SCORES, SCORES

__all__ = ["summary", "d4_scores"]


def d4_scores(work: Workdir) -> dict | None:
    """The D4-robustness record of a run (``eval_test.json``), if it was scored."""
    path = work.path / "eval_test.json"
    return json.loads(path.read_text()) if path.is_file() else None


def summary(task: Task, config: Config, work: Workdir) -> dict:
    """One finished run: validation (best epoch by AUC, best accuracy of any epoch, the
    last epoch's dynamic-layer diagnostics averaged over layers), test scores where the
    test split was read, size, cost and the validation curve. The attention entropy is
    left out where a layer lacks it or recorded a negative one (signed bank mixes
    trained before ``attention_entropy`` counted them by magnitude share)."""
    results, history = work.results(), work.history()
    best = max(history, key=lambda h: h["val_auc"])
    flops = results.get("forward_flops")
    if flops is None:  # runs trained before results recorded it for every run
        flops = models.flops_per_image(
            config.model, num_classes=len(results["val"]["confusion_matrix"]),
            input_size=results.get("input_size"),
            in_channels=len(results["normalization"]["mean"]) if "normalization" in results
            else None, **model_kwargs(config))
    out = {"dataset": task.dataset, "model": task.name, "seed": task.seed,
           "workdir": str(work.path), "val_auc": results["val"]["auc"],
           "val_accuracy": best["val_accuracy"],
           "val_accuracy_max": max(h["val_accuracy"] for h in history),
           "best_epoch": results["best_epoch"], "epochs": len(history),
           "num_params": results["num_params"], "forward_flops": flops,
           "train_seconds": results["train_seconds"],
           "train_fraction": config.train_fraction, "num_train": results.get("num_train"),
           "backend": results.get("backend"), "finished": work.finished(),
           "val_auc_curve": [h["val_auc"] for h in history]}
    if results.get("test"):
        out.update({f"test_{key}": results["test"][key] for key in SCORES})
        out.update({f"test_{key}": results["test"][key] for key in EXTRA_SCORES
                    if key in results["test"]})
    robust = d4_scores(work)
    if robust:
        out.update({"d4_auc_min": robust["d4"]["auc_min"], "d4_auc_max": robust["d4"]["auc_max"]})
    layers = history[-1].get("dynamic_layers")
    if layers:
        out["bank_common_share"] = float(np.mean([d["bank_common_share"] for d in layers]))
        entropy = [d.get("attention_entropy", np.nan) for d in layers]
        if all(e >= 0 for e in entropy):  # NaN compares false: left out too
            out["attention_entropy"] = float(np.mean(entropy))
    return out
