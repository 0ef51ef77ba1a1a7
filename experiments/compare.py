"""Sweep: train model families over seeds and datasets; tables, robustness and plots.

    python -m experiments.compare --workdir runs/compare \\
        [--datasets breastmnist pneumoniamnist] [--models cnn p4_gcnn ...] \\
        [--seeds 0 1 2 3 4] [--set epochs=30 ...]

Every run is a ``train_and_evaluate`` work directory ``<workdir>/<dataset>/<model>/seed<N>``
(the best epoch is chosen on validation AUC, the test split is read once with the best
checkpoint); a finished run is not trained again, so an interrupted sweep continues
where it stopped. Each trained model is then scored on all 8 D4-transformed copies of
the test split (robustness). Writes ``results.json`` and ``results.md`` (mean +- std
over seeds of test AUC and accuracy, parameters, training time, D4 spread) and
``auc_bars.png``, ``roc_<dataset>.png`` and ``val_auc_<dataset>.png``.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from dgcnn_jax import metrics
from experiments import evaluate, train
from experiments.configs import get_config, override

PARAMETER_MATCHED = ("cnn", "p4_gcnn", "p4m_gcnn", "p4_dgcnn", "p4m_dgcnn")
FLOP_MATCHED = ("p4_dgcnn_wide", "p4m_dgcnn_wide")


def run_one(dataset: str, model: str, seed: int, workdir: pathlib.Path, sets: list[str]):
    """Train (unless finished) and score one run; returns its summary."""
    work = workdir / dataset / model / f"seed{seed}"
    config = override(get_config(), [*sets, f"dataset={dataset}", f"model={model}",
                                     f"seed={seed}"])
    if (work / "results.json").is_file():
        results = json.loads((work / "results.json").read_text())
    else:
        results = train.train_and_evaluate(config, work)
    robust_path = work / "eval_test.json"
    robust = (json.loads(robust_path.read_text()) if robust_path.is_file()
              else evaluate.evaluate(work, "test", d4=True))
    history = [json.loads(line) for line in (work / "metrics.jsonl").open()]
    return {"dataset": dataset, "model": model, "seed": seed, "workdir": str(work),
            "test_auc": results["test"]["auc"], "test_accuracy": results["test"]["accuracy"],
            "num_params": results["num_params"], "train_seconds": results["train_seconds"],
            "best_epoch": results["best_epoch"], "d4_auc_min": robust["d4"]["auc_min"],
            "d4_auc_max": robust["d4"]["auc_max"],
            "val_auc_curve": [h["val_auc"] for h in history]}


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["dataset"], r["model"]) for r in runs},
                  key=lambda k: (k[0], _order(k[1])))
    for dataset, model in keys:
        rs = [r for r in runs if r["dataset"] == dataset and r["model"] == model]
        auc = np.array([r["test_auc"] for r in rs])
        acc = np.array([r["test_accuracy"] for r in rs])
        rows.append({"dataset": dataset, "model": model, "seeds": len(rs),
                     "auc_mean": float(auc.mean()), "auc_std": float(auc.std(ddof=1))
                     if len(rs) > 1 else 0.0, "accuracy_mean": float(acc.mean()),
                     "accuracy_std": float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
                     "num_params": rs[0]["num_params"],
                     "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rs])),
                     "d4_auc_drop_max": float(max(r["test_auc"] - r["d4_auc_min"]
                                                  for r in rs))})
    return rows


def _order(model: str) -> int:
    names = PARAMETER_MATCHED + FLOP_MATCHED
    return names.index(model) if model in names else len(names)


def markdown(rows: list[dict]) -> str:
    lines = ["| dataset | model | seeds | test AUC | test accuracy | parameters | "
             "train time (s) | largest AUC drop on a D4 copy |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | `{r['model']}` | {r['seeds']} | "
                     f"{r['auc_mean']:.3f} +- {r['auc_std']:.3f} | "
                     f"{r['accuracy_mean']:.3f} +- {r['accuracy_std']:.3f} | "
                     f"{r['num_params']:,} | {r['train_seconds_mean']:.0f} | "
                     f"{r['d4_auc_drop_max']:.4f} |")
    return "\n".join(lines)


def plots(runs: list[dict], rows: list[dict], out: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rs = [r for r in rows if r["dataset"] == dataset]
        ax.bar(range(len(rs)), [r["auc_mean"] for r in rs],
               yerr=[r["auc_std"] for r in rs], capsize=4)
        ax.set_xticks(range(len(rs)), [r["model"] for r in rs], rotation=30, ha="right")
        low = min(r["auc_mean"] - r["auc_std"] for r in rs)
        ax.set(ylabel="test AUC (mean +- std)", title=dataset, ylim=(max(0.0, low - 0.05), 1.0))
    fig.tight_layout()
    fig.savefig(out / "auc_bars.png", dpi=100)
    plt.close(fig)
    for dataset in datasets:
        fig, (roc_ax, curve_ax) = plt.subplots(1, 2, figsize=(9, 3.8))
        for model in [r["model"] for r in rows if r["dataset"] == dataset]:
            rs = [r for r in runs if r["dataset"] == dataset and r["model"] == model]
            work = pathlib.Path(rs[0]["workdir"])
            probs = np.load(work / "test_probs.npy")
            labels = _test_labels(work)
            fpr, tpr = metrics.roc_curve(probs[:, 1], labels == 1)
            roc_ax.plot(fpr, tpr, label=f"{model} (seed {rs[0]['seed']})")
            curves = [r["val_auc_curve"] for r in rs]
            n = min(len(c) for c in curves)
            curve_ax.plot(range(1, n + 1), np.mean([c[:n] for c in curves], axis=0),
                          label=model)
        roc_ax.plot([0, 1], [0, 1], "k:", lw=1)
        roc_ax.set(xlabel="false positive rate", ylabel="true positive rate",
                   title=f"{dataset}: test ROC")
        curve_ax.set(xlabel="epoch", ylabel="validation AUC (mean over seeds)")
        for ax in (roc_ax, curve_ax):
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"roc_{dataset}.png", dpi=100)
        plt.close(fig)


def _test_labels(work: pathlib.Path) -> np.ndarray:
    from dgcnn_jax import data

    config = json.loads((work / "config.json").read_text())
    return data.load(config["dataset"], "test", config["data_dir"])[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/compare")
    p.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist"])
    p.add_argument("--models", nargs="+", default=list(PARAMETER_MATCHED + FLOP_MATCHED))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--set", action="append", default=["progress=false"], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    for dataset in args.datasets:  # fail on bad names before any training
        for model in args.models:
            train.validate(override(get_config(), [*args.set, f"dataset={dataset}",
                                                   f"model={model}"]))
    out = pathlib.Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for dataset in args.datasets:
        for model in args.models:
            for seed in args.seeds:
                print(f"== {dataset} {model} seed {seed}", flush=True)
                runs.append(run_one(dataset, model, seed, out, args.set))
    rows = summarize(runs)
    (out / "results.json").write_text(json.dumps({"runs": runs, "summary": rows}, indent=2))
    table = markdown(rows)
    (out / "results.md").write_text(table + "\n")
    plots(runs, rows, out)
    print(table)
    return rows


if __name__ == "__main__":
    main()
