"""Machine-readable results per dataset, their paired tests, and tables from the files.

``experiments.compare --results-dir results`` writes ``results/<dataset>.json`` for each
dataset of a sweep (:func:`dataset_document`): per run name the seeds, per-seed test
metrics (accuracy, balanced accuracy, macro AUC, NLL), mean, sample std and 95%
t-interval, parameters, forward FLOPs, training time and the backend; the machine that
wrote the file; and for each pair of :data:`PAIRS` that ran, a paired t-test over seeds
(test accuracy and AUC) and a paired bootstrap over test images (accuracy, from each
run's ``test_probs.npy``). The files are what the README's tables come from:

    python -m experiments.report results/pbc.json results/breastmnist.json [--out results.md]

renders them (Markdown) without the run folders.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform

import jax
import numpy as np

from experiments import stats

__all__ = ["PAIRS", "SCORES", "TEST_COLUMNS", "paired_tests", "machine", "dataset_document",
           "write_results", "cell", "p_text", "pair_cells", "markdown", "main"]

SCORES = ("accuracy", "balanced_accuracy", "auc", "nll")
"""Test metrics kept per seed (``test_<name>`` in a run summary)."""

PAIRS = (("p4m_dgcnn_wide", "p4m_gcnn"), ("p4m_dgcnn", "p4m_gcnn"), ("p4m_gcnn", "cnn"),
         ("p4m_dgcnn_wide", "cnn"), ("p4m_dgcnn", "cnn"), ("p4m_gcnn", "cnn_augment"),
         ("p4m_dgcnn_wide", "p4m_dgcnn_wide_k1"), ("p4m_dgcnn_wide", "p4m_dgcnn_wide_frozen"))
"""The comparisons the conclusions name (A vs B, differences A - B): dynamic vs static
p4m at the same width (primary) and parameter-matched, p4m vs the CNN, the symmetry
control, and the dynamic net against its one-bank and frozen-bank controls."""


def _correct(run: dict) -> np.ndarray:
    work = pathlib.Path(run["workdir"])
    probs, labels = np.load(work / "test_probs.npy"), np.load(work / "test_labels.npy")
    return (probs.argmax(axis=-1) == np.asarray(labels).reshape(-1)).astype(np.float64)


def paired_tests(runs: list[dict], pairs=PAIRS, *, resamples: int = 10_000) -> list[dict]:
    """For each (dataset, training fraction) and each pair (A, B) of ``pairs`` that both
    ran there, on the seeds both have: paired t-tests over seeds of test accuracy and
    macro AUC, and a paired bootstrap over test images of the seed-averaged accuracy
    difference (:func:`experiments.stats.paired_bootstrap`)."""
    out = []
    groups = sorted({(r["dataset"], r.get("train_fraction", 1.0)) for r in runs})
    for dataset, fraction in groups:
        here = {(r["model"], r["seed"]): r for r in runs
                if (r["dataset"], r.get("train_fraction", 1.0)) == (dataset, fraction)}
        for a, b in pairs:
            seeds = sorted(s for m, s in here if m == a and (b, s) in here)
            if not seeds:
                continue
            acc = stats.paired_t([here[a, s]["test_accuracy"] for s in seeds],
                                 [here[b, s]["test_accuracy"] for s in seeds])
            auc = stats.paired_t([here[a, s]["test_auc"] for s in seeds],
                                 [here[b, s]["test_auc"] for s in seeds])
            boot = stats.paired_bootstrap([_correct(here[a, s]) for s in seeds],
                                          [_correct(here[b, s]) for s in seeds],
                                          resamples=resamples)
            out.append({"dataset": dataset, "train_fraction": fraction, "a": a, "b": b,
                        "seeds": seeds, "accuracy_difference": acc["mean_difference"],
                        "t_test_p": acc["p"], "auc_difference": auc["mean_difference"],
                        "auc_t_test_p": auc["p"], "bootstrap": boot})
    return out


def machine() -> dict:
    """Where a file was written (each run also records its own backend)."""
    return {"platform": platform.platform(), "processor": platform.machine(),
            "backend": jax.default_backend(), "jax": jax.__version__}


def dataset_document(runs: list[dict], dataset: str, settings: dict, *,
                     order: list[str] | None = None) -> dict:
    """The record of one dataset's runs (``compare.run_one`` summaries): per run name,
    per-seed test metrics and their spread; the paired tests of :data:`PAIRS`."""
    runs = [r for r in runs if r["dataset"] == dataset]
    names = order or sorted({r["model"] for r in runs})
    models = {}
    for name in [n for n in names if any(r["model"] == n for r in runs)]:
        rs = sorted((r for r in runs if r["model"] == name), key=lambda r: r["seed"])
        entry = {"seeds": [r["seed"] for r in rs],
                 "per_seed": [{"seed": r["seed"], **{k: r[f"test_{k}"] for k in SCORES},
                               "val_auc": r["val_auc"], "best_epoch": r["best_epoch"],
                               "train_seconds": r["train_seconds"],
                               "backend": r.get("backend")} for r in rs],
                 "num_params": rs[0]["num_params"], "forward_flops": rs[0]["forward_flops"],
                 "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rs])),
                 "tuned": rs[0].get("tuned")}
        for key in SCORES:
            entry[key] = stats.mean_interval([r[f"test_{key}"] for r in rs])
        models[name] = entry
    return {"dataset": dataset, "protocol": settings, "machine": machine(),
            "models": models, "tests": paired_tests(runs)}


def write_results(runs: list[dict], directory: pathlib.Path, settings: dict, *,
                  order: list[str] | None = None) -> list[pathlib.Path]:
    """``<directory>/<dataset>.json`` for every dataset of ``runs``."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for dataset in sorted({r["dataset"] for r in runs}):
        path = directory / f"{dataset}.json"
        doc = dataset_document(runs, dataset, settings, order=order)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        paths.append(path)
    return paths


def cell(score: dict) -> str:
    """``mean +- std [low, high]`` of a :func:`experiments.stats.mean_interval` record."""
    if score["n"] == 1:
        return f"{score['mean']:.4f} (one seed)"
    return f"{score['mean']:.4f} +- {score['std']:.4f} [{score['low']:.4f}, {score['high']:.4f}]"


def p_text(p) -> str:
    """A p-value for a table (``<= 1e-4`` at the bootstrap's floor of 1/10,000)."""
    return "n/a" if p is None else (f"{p:.2g}" if p > 1e-4 else "<= 1e-4")


TEST_COLUMNS = ("A vs B | seeds | accuracy A - B | paired t-test p | bootstrap 95% interval | "
                "bootstrap p")


def pair_cells(t: dict) -> str:
    """The :data:`TEST_COLUMNS` cells of one :func:`paired_tests` record."""
    b = t["bootstrap"]
    return (f"`{t['a']}` vs `{t['b']}` | {len(t['seeds'])} | {t['accuracy_difference']:+.4f} | "
            f"{p_text(t['t_test_p'])} | [{b['low']:+.4f}, {b['high']:+.4f}] | {p_text(b['p'])}")


def markdown(doc: dict) -> str:
    """The tables of one dataset's file: per model (mean +- std [95% interval] over
    seeds) and the paired tests."""
    lines = [f"**{doc['dataset']}** (seeds per model: mean +- sample std [95% t-interval])",
             "", "| model | seeds | test accuracy | test balanced accuracy | test macro AUC | "
             "test NLL | parameters | forward MFLOPs | train time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in doc["models"].items():
        lines.append(f"| `{name}` | {len(m['seeds'])} | {cell(m['accuracy'])} | "
                     f"{cell(m['balanced_accuracy'])} | {cell(m['auc'])} | "
                     f"{m['nll']['mean']:.4f} | {m['num_params']:,} | "
                     f"{m['forward_flops'] / 1e6:.1f} | {m['train_seconds_mean']:.0f} |")
    if not doc["tests"]:
        lines += ["", "(no pair of the paired tests ran on this dataset)"]
    else:
        lines += ["", f"| {TEST_COLUMNS} | AUC A - B | AUC paired t-test p |",
                  "|---|---|---|---|---|---|---|---|"]
        for t in doc["tests"]:
            lines.append(f"| {pair_cells(t)} | {t['auc_difference']:+.4f} | "
                         f"{p_text(t['auc_t_test_p'])} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="results/<dataset>.json files")
    p.add_argument("--out", default=None, help="also write the Markdown here")
    args = p.parse_args(argv)
    parts = []
    for name in args.files:
        path = pathlib.Path(name)
        if not path.is_file():
            raise SystemExit(f"error: {path}: no such results file")
        parts.append(markdown(json.loads(path.read_text())))
    text = "\n\n".join(parts) + "\n"
    if args.out:
        pathlib.Path(args.out).write_text(text)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
