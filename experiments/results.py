"""Results from the committed run records alone: no work directory, no training.

    python -m experiments.results [--records results/runs] [--out results] [--figures docs]

For every dataset with records (:mod:`experiments.sweep.records`), writes
``<out>/<dataset>.json`` (:func:`experiments.report.dataset_document`: per run the seeds,
per-seed test metrics, mean +- sd and 95% interval, the paired t-tests over seeds and
the paired bootstraps over test images of the registry's comparisons), with the plan's
runs that have no record yet listed as missing (:data:`CPU_PLAN`); and
``<figures>/results_<dataset>.png`` (test ROC of seed 0 and the per-seed test AUC of
every run). Then rewrites the generated blocks of ``README.md`` and ``docs/*.md``
(``experiments.report --update``), among them the ``headline`` kind:
:func:`headline` answers, from a results file, whether the dynamic layer helps.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from experiments import cli, plots, report, sweep
from experiments.sweep import records

__all__ = ["CPU_PLAN", "SELECTED_DYNAMIC", "SETTINGS",
           "plan_missing", "build", "headline", "verdict", "figure", "main"]

ROOT = pathlib.Path(__file__).resolve().parent.parent

SELECTED_DYNAMIC = "p4m_dgcnn_wide"
"""The dynamic form the dynamic-layer selection on IDC validation chose (the best mean
validation AUC of the dynamic runs of ``results/idc_selection.json``: the published layer
at the static width; a test keeps the two in step)."""

_CPU_RUNS = tuple(dict.fromkeys(("cnn", "cnn_augment", "p4m_gcnn", "p4m_dgcnn_wide",
                                 SELECTED_DYNAMIC, sweep.ONE_BANK_CONTROLS[SELECTED_DYNAMIC])))

CPU_PLAN = {
    "idc": (_CPU_RUNS, (0, 1, 2, 3, 4)),
    "breastmnist": ((*_CPU_RUNS, "p4m_gcnn_orient", f"{SELECTED_DYNAMIC}_orient"),
                    (0, 1, 2, 3, 4)),
    "pbc": (_CPU_RUNS, (0, 1, 2)),
}
"""The runs and seeds of the protocol sized for this project's two CPU cores
(``docs/results.md``), in priority order: the CNN with and without D4 augmentation, the
static p4m G-CNN, the published dynamic layer at its width, the selected dynamic form and
its one-bank control; on BreastMNIST (canonical orientation) also the orientation-aware
readouts of the static and the selected dynamic net."""

SETTINGS = {"selection": "best epoch on validation AUC; test split read once",
            "learning_rate": "the default schedule and learning rate for every run, no tuning",
            "source": "committed run records (experiments.sweep.records)"}

_DYNAMIC = (("p4m_dgcnn_wide", "p4m_gcnn"),)
"""The comparisons the headline sentence answers: the dynamic layer against the static
p4m G-CNN at the same width."""


def plan_missing(runs: list[dict], dataset: str) -> list[str]:
    """``run/seedN`` of the plan of ``dataset`` without a record."""
    names, seeds = CPU_PLAN.get(dataset, ((), ()))
    have = {(r["model"], r["seed"]) for r in runs if r["dataset"] == dataset}
    return [f"{n}/seed{s}" for s in seeds for n in names if (n, s) not in have]


def figure(runs: list[dict], dataset: str, path: pathlib.Path) -> None:
    """Test ROC of each run's first seed, and every seed's test AUC per run."""
    here = [r for r in runs if r["dataset"] == dataset]
    names = list(dict.fromkeys(r["model"] for r in here))
    plt = plots._pyplot()
    fig, (roc_ax, seed_ax) = plt.subplots(1, 2, figsize=(9, 3.8))
    for i, name in enumerate(names):
        rs = sorted((r for r in here if r["model"] == name), key=lambda r: r["seed"])
        probs, labels = records.test_predictions(rs[0])
        fpr, tpr = plots.macro_roc(probs, labels)
        roc_ax.plot(fpr, tpr, label=f"{name} (seed {rs[0]['seed']})")
        seed_ax.scatter([i] * len(rs), [r["test_auc"] for r in rs], s=14)
        seed_ax.hlines(np.mean([r["test_auc"] for r in rs]), i - 0.3, i + 0.3, colors="k")
    roc_ax.plot([0, 1], [0, 1], "k:", lw=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title=f"{dataset}: test ROC")
    roc_ax.legend(fontsize=7)
    seed_ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    seed_ax.set(ylabel="test AUC (dot: a seed; bar: mean)", title=f"{dataset}: per seed")
    path.parent.mkdir(parents=True, exist_ok=True)
    plots._save(fig, path)


def build(records_dir: pathlib.Path, out: pathlib.Path, figures: pathlib.Path | None,
          datasets: list[str] | None = None) -> list[pathlib.Path]:
    """Results files (and figures) of every dataset with records; returns the files."""
    runs = records.collect(records_dir, datasets)
    if not runs:
        raise ValueError(f"{records_dir}: no run records (expected "
                         f"<dataset>/<run>/seed<N>.json)")
    written = []
    for dataset in sorted({r["dataset"] for r in runs}):
        names = CPU_PLAN.get(dataset, ((),))[0]
        order = [*names, *sorted({r["model"] for r in runs if r["dataset"] == dataset}
                                 - set(names))]
        settings = {**SETTINGS, "missing": plan_missing(runs, dataset)}
        doc = report.dataset_document(runs, dataset, settings, order=order)
        path = pathlib.Path(out) / f"{dataset}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        written.append(path)
        if figures is not None:
            figure(runs, dataset, pathlib.Path(figures) / f"results_{dataset}.png")
    return written


def _verdict(auc: dict, boot: dict | None, seeds: int) -> str:
    if auc["p"] is None:
        return (f"not decided yet ({seeds} seed{'s' if seeds != 1 else ''}: the paired "
                f"t-test needs at least two with differing results)")
    by_seeds = auc["p"] < 0.05
    by_images = boot is not None and boot["p"] < 0.05
    side = "higher" if auc["mean_difference"] > 0 else "lower"
    if by_seeds and by_images:
        return "the dynamic layer is better" if auc["mean_difference"] > 0 else \
            "the dynamic layer is worse"
    if by_images:
        return (f"{side} on the test images of these {seeds} seeds (bootstrap), but the "
                f"spread between seeds leaves it open (t-test): not a difference this "
                f"protocol can call at {seeds} seeds")
    if by_seeds:
        return (f"{side} across seeds (t-test), but within the spread over test images "
                f"(bootstrap): not a difference this protocol can call at {seeds} seeds")
    return f"no difference this protocol can detect at {seeds} seeds"


def headline(doc: dict) -> str:
    """One table row per run (test AUC, accuracy, F1 where recorded) and one plain
    sentence per comparison of :data:`_DYNAMIC`: does the dynamic layer help, by how much,
    how sure (both the paired t-test over seeds and the paired bootstrap over test images
    at p < 0.05 to call it a difference)."""
    has_f1 = all("f1" in m for m in doc["models"].values())
    lines = [f"| {doc['dataset']} | seeds | test AUC | test accuracy |"
             + (" test F1 |" if has_f1 else ""), "|---|---|---|---|" + ("---|" if has_f1 else "")]
    for name, m in doc["models"].items():
        lines.append(f"| `{name}` | {len(m['seeds'])} | {report.cell(m['auc'])} | "
                     f"{report.cell(m['accuracy'])} |"
                     + (f" {report.cell(m['f1'])} |" if has_f1 else ""))
    missing = doc["protocol"].get("missing") or []
    if missing:
        seeds: dict[str, list[str]] = {}
        for item in missing:
            name, seed = item.split("/seed")
            seeds.setdefault(name, []).append(seed)
        lines += ["", f"Not yet recorded ({len(missing)} runs of the plan): "
                      + "; ".join(f"`{n}` seed{'s' if len(s) > 1 else ''} {', '.join(s)}"
                                  for n, s in seeds.items())
                      + "."]
    return "\n".join([*lines, "", verdict(doc)])


def verdict(doc: dict) -> str:
    """The sentences of :func:`headline` alone (block kind ``verdict``): for each
    comparison of :data:`_DYNAMIC`, does the dynamic layer help, by how much, how sure."""
    sentences = []
    for a, b in _DYNAMIC:
        test = next((t for t in doc["tests"] if (t["a"], t["b"]) == (a, b)), None)
        if test is None:
            sentences.append(f"**Does the dynamic layer help on {doc['dataset']}?** `{a}` "
                             f"minus `{b}`: not answered yet, as they are not both recorded.")
            continue
        auc = {"mean_difference": test["auc_difference"], "p": test["auc_t_test_p"]}
        boot = test.get("auc_bootstrap")
        interval = (f"; paired bootstrap over {boot['images']} test images: 95% interval "
                    f"[{boot['low']:+.4f}, {boot['high']:+.4f}], p {report.p_text(boot['p'])}"
                    if boot else "")
        sentences.append(f"**Does the dynamic layer help on {doc['dataset']}?** `{a}` minus "
                         f"`{b}` (the same width): test AUC {test['auc_difference']:+.4f} "
                         f"(paired t-test over {len(test['seeds'])} "
                         f"seed{'s' if len(test['seeds']) != 1 else ''} p "
                         f"{report.p_text(test['auc_t_test_p'])}{interval}): "
                         f"{_verdict(auc, boot, len(test['seeds']))}.")
    return "\n\n".join(sentences)


def main(argv=None) -> list[pathlib.Path]:
    p = cli.Parser(__doc__, prog="python -m experiments.results")
    p.add_argument("--records", default=str(ROOT / "results" / "runs"))
    p.add_argument("--out", default=str(ROOT / "results"), help="results/<dataset>.json here")
    p.add_argument("--figures", default=str(ROOT / "docs"),
                   help="results_<dataset>.png here ('' for none)")
    p.add_argument("--datasets", nargs="+", default=None)
    p.add_argument("--update", nargs="*", default=None, metavar="MARKDOWN",
                   help="rewrite the generated blocks of these files (default: README.md "
                        "and docs/*.md of the repository)")
    args = p.parse_args(argv)
    written = build(pathlib.Path(args.records), pathlib.Path(args.out),
                    pathlib.Path(args.figures) if args.figures else None, args.datasets)
    for path in written:
        print(f"wrote {path}")
    pages = (args.update if args.update is not None else
             [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    for page in pages:
        if report.update_blocks(pathlib.Path(page), ROOT):
            print(f"updated {page}")
    return written


if __name__ == "__main__":
    cli.run(main, "experiments.results", on_interrupt="run the command again")
