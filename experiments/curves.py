"""Learning curves: test scores against training-set size, with intervals and paired tests.

:mod:`experiments.compare` ``--fractions`` trains every run of a sweep on class-stratified
fractions of the training split (``train_fraction``, the same images for every model at
a fraction: ``data_seed``) into ``<workdir>/fraction<F>/<dataset>/<name>/seed<N>``, all
for the same number of steps (``epochs`` x ``steps_per_epoch``: an epoch is a set number
of steps whatever the subset's size, so every fraction sees as many batches and as many
validations; the best epoch is chosen on validation AUC and the test split read once).
This module turns the finished runs into the summary (:func:`summarize`), the paired
tests at each fraction (:func:`experiments.report.paired_tests`), a table
(:func:`markdown`) and the plot (:func:`plot`).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from experiments import report, stats
from experiments.sweep.registry import COMPARISONS, CURVE_RUNS, SCORES

__all__ = ["summarize", "document", "markdown", "headline", "plot", "write"]


def summarize(runs: list[dict]) -> list[dict]:
    """Per (dataset, fraction, run name): training images, seeds, and per test score the
    per-seed values, mean, sample std and 95% t-interval; test error = 1 - accuracy."""
    rows = []
    keys = sorted({(r["dataset"], r["train_fraction"], r["model"]) for r in runs},
                  key=lambda k: (k[0], k[1], _order(k[2])))
    for dataset, fraction, model in keys:
        rs = sorted((r for r in runs if (r["dataset"], r["train_fraction"], r["model"])
                     == (dataset, fraction, model)), key=lambda r: r["seed"])
        row = {"dataset": dataset, "train_fraction": fraction, "model": model,
               "num_train": rs[0]["num_train"], "seeds": [r["seed"] for r in rs],
               "num_params": rs[0]["num_params"], "forward_flops": rs[0]["forward_flops"],
               "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rs])),
               "best_epochs": [r["best_epoch"] for r in rs]}
        for key in SCORES:
            values = [r[f"test_{key}"] for r in rs]
            row[key] = {"values": values, **stats.mean_interval(values)}
        error = [1.0 - r["test_accuracy"] for r in rs]
        row["error"] = {"values": error, **stats.mean_interval(error)}
        rows.append(row)
    return rows


def _order(name: str) -> int:
    return CURVE_RUNS.index(name) if name in CURVE_RUNS else len(CURVE_RUNS)


def document(runs: list[dict], settings: dict) -> dict:
    """The machine-readable record of a learning-curve sweep: protocol, machine, every
    run, the summary and the paired tests."""
    keep = ("dataset", "train_fraction", "num_train", "model", "seed", "val_auc",
            "best_epoch", "test_accuracy", "test_balanced_accuracy", "test_auc", "test_nll",
            "num_params", "forward_flops", "train_seconds", "backend")
    return {"protocol": settings, "machine": report.machine(),
            "runs": [{k: r.get(k) for k in keep} for r in runs],
            "summary": summarize(runs), "tests": report.paired_tests(runs, COMPARISONS)}


def markdown(doc: dict) -> str:
    """Tables of a :func:`document`: test accuracy per model and fraction (mean +- std
    [95% interval] over seeds), then the paired tests."""
    lines = ["| fraction | training images | model | seeds | test accuracy | "
             "test balanced accuracy | test macro AUC | parameters | train time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["summary"]:
        lines.append(f"| {r['train_fraction']:g} | {r['num_train']:,} | `{r['model']}` | "
                     f"{len(r['seeds'])} | {report.cell(r['accuracy'])} | "
                     f"{r['balanced_accuracy']['mean']:.4f} | {r['auc']['mean']:.4f} | "
                     f"{r['num_params']:,} | {r['train_seconds_mean']:.0f} |")
    lines += ["", f"| fraction | {report.TEST_COLUMNS} |", "|---|---|---|---|---|---|---|"]
    for t in doc["tests"]:
        lines.append(f"| {t['train_fraction']:g} | {report.pair_cells(t)} |")
    return "\n".join(lines)


def plot(doc: dict, path: pathlib.Path) -> None:
    """Test accuracy and test error (log scale) against training images, mean over seeds
    with the 95% interval, one line per model (and dataset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = sorted({(r["dataset"], r["model"]) for r in doc["summary"]},
                    key=lambda k: (k[0], _order(k[1])))
    for dataset, model in groups:
        rs = sorted((r for r in doc["summary"] if (r["dataset"], r["model"]) ==
                     (dataset, model)), key=lambda r: r["num_train"])
        x = [r["num_train"] for r in rs]
        label = model if len({g[0] for g in groups}) == 1 else f"{dataset} {model}"
        for ax, key in zip(axes, ("accuracy", "error")):
            mean = np.array([r[key]["mean"] for r in rs])
            low = np.array([r[key]["low"] for r in rs])
            high = np.array([r[key]["high"] for r in rs])
            line, = ax.plot(x, mean, marker="o", label=label)
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    seeds = sorted({len(r["seeds"]) for r in doc["summary"]})
    for ax, key in zip(axes, ("test accuracy", "test error (1 - accuracy)")):
        ax.set_xscale("log")
        ax.set_xlabel("training images (log scale)")
        ax.set_ylabel(key)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"learning curves: mean over {'/'.join(map(str, seeds))} seeds, "
                 f"95% t-intervals")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(doc: dict, out: pathlib.Path, results: str | None = None,
          figure: str | None = None) -> dict:
    """``curves.json``, ``curves.md`` and ``curves.png`` in ``out`` (and the JSON at
    ``results``, the plot at ``figure``); prints the tables."""
    text = json.dumps(doc, indent=2) + "\n"
    table = markdown(doc)
    (out / "curves.json").write_text(text)
    (out / "curves.md").write_text(table + "\n")
    plot(doc, out / "curves.png")
    for path, write_one in ((results, lambda p: p.write_text(text)),
                            (figure, lambda p: plot(doc, p))):
        if path:
            pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_one(pathlib.Path(path))
    print(table)
    return doc


def headline(doc: dict, primary: tuple[str, str] = ("p4m_dgcnn_wide", "p4m_gcnn")) -> str:
    """The short table of a curve document: test accuracy per model (mean +- sample std
    over seeds) at each fraction, then the primary comparison's paired tests."""
    fractions = sorted({r["train_fraction"] for r in doc["summary"]})
    images = {r["train_fraction"]: r["num_train"] for r in doc["summary"]}
    models = sorted({r["model"] for r in doc["summary"]}, key=_order)
    cells = {(r["train_fraction"], r["model"]): r["accuracy"] for r in doc["summary"]}
    lines = ["| test accuracy | " + " | ".join(f"{f:g} ({images[f]:,} images)"
                                               for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]
    for model in models:
        row = [cells.get((f, model)) for f in fractions]
        lines.append(f"| `{model}` | " + " | ".join(
            "-" if c is None else f"{c['mean']:.3f} +- {c['std']:.3f}" for c in row) + " |")
    tests = {t["train_fraction"]: t for t in doc["tests"] if (t["a"], t["b"]) == primary}
    if tests:
        a, b = primary
        lines += ["", f"| `{a}` - `{b}` | " + " | ".join(f"{f:g}" for f in fractions) + " |",
                  "|---|" + "---|" * len(fractions)]
        for label, cell in (
                ("accuracy difference", lambda t: f"{t['accuracy_difference']:+.3f}"),
                ("paired t-test p (seeds)", lambda t: report.p_text(t["t_test_p"])),
                ("paired bootstrap p (images)", lambda t: report.p_text(t["bootstrap"]["p"]))):
            lines.append(f"| {label} | " + " | ".join(
                cell(tests[f]) if f in tests else "-" for f in fractions) + " |")
    return "\n".join(lines)
