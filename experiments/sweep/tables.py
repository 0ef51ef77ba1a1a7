"""Tables and plots of a sweep from run summaries (:func:`experiments.sweep.collect.summary`).

:func:`summarize` aggregates the seeds of each (dataset, run); :func:`sections` groups the
rows into the family tables of :data:`~experiments.sweep.registry.FAMILIES`;
:func:`markdown` renders test results and :func:`selection_markdown` validation-only
selections with their paired tests (:func:`selection_rows`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np

from dgcnn_jax import models
from experiments import plots, stats

from .records import test_predictions
from .registry import FAMILIES, RUNS, SCORES, Family, entry, order

__all__ = ["summarize", "sections", "markdown", "write_plots", "selection_rows",
           "chosen_dynamic", "selection_headline",
           "selection_markdown", "SELECTION_METRICS"]


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (dataset, run name): mean and spread over seeds, in table order."""
    rows = []
    keys = sorted({(r["dataset"], r["model"]) for r in runs},
                  key=lambda k: (k[0], order(k[1])))
    for dataset, model in keys:
        rs = [r for r in runs if r["dataset"] == dataset and r["model"] == model]
        row = {"dataset": dataset, "model": model, "seeds": len(rs),
               "val_auc_mean": float(np.mean([r["val_auc"] for r in rs]))}
        for key in SCORES:
            values = np.array([r[f"test_{key}"] for r in rs])
            row[f"{key}_mean"] = float(values.mean())
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(rs) > 1 else 0.0
        row.update({"num_params": rs[0]["num_params"],
                    "mflops": rs[0]["forward_flops"] / 1e6,
                    "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rs])),
                    "d4_auc_drop_max": float(max(r["test_auc"] - r["d4_auc_min"]
                                                 for r in rs))})
        rows.append(row)
    return rows


def sections(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Group summary rows into the tables of results.md, per dataset.

    A family's table is shown when one of its own runs ran; it lists the family's
    references (runs of other families, e.g. the static counterpart) first, then its own
    runs, in :data:`RUNS` order. Runs of no family go to a last table.
    """
    out = []
    for dataset in sorted({r["dataset"] for r in rows}):
        by_name = {r["model"]: r for r in rows if r["dataset"] == dataset}
        for key, family in FAMILIES.items():
            own = [n for n, run in RUNS.items() if run.family == key]
            if any(n in by_name for n in own):
                names = [*family.references, *own]
                out.append((f"{dataset}: {family.title}",
                            [by_name[n] for n in names if n in by_name]))
        rest = [r for n, r in by_name.items() if n not in RUNS]
        if rest:
            out.append((f"{dataset}: other models", rest))
    return out


def _spread(row: dict, key: str) -> str:
    """``mean +- std`` over seeds (the mean alone for one seed)."""
    if row["seeds"] == 1:
        return f"{row[key + '_mean']:.3f} (one seed)"
    return f"{row[key + '_mean']:.3f} +- {row[key + '_std']:.3f}"


def markdown(rows: list[dict]) -> str:
    lines = []
    for title, rs in sections(rows):
        lines += [f"**{title}**", "",
                  "| model | seeds | val AUC (best epoch) | test AUC | test accuracy | "
                  "test balanced accuracy | test NLL | parameters | forward MFLOPs | "
                  "train time (s) | largest AUC drop on a D4 copy |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            lines.append(f"| `{r['model']}` | {r['seeds']} | {r['val_auc_mean']:.3f} | "
                         f"{_spread(r, 'auc')} | {_spread(r, 'accuracy')} | "
                         f"{_spread(r, 'balanced_accuracy')} | {_spread(r, 'nll')} | "
                         f"{r['num_params']:,} | {r['mflops']:.1f} | "
                         f"{r['train_seconds_mean']:.0f} | {r['d4_auc_drop_max']:.4f} |")
        lines.append("")
    return "\n".join(lines)


def write_plots(runs: list[dict], rows: list[dict], out: pathlib.Path) -> None:
    """``auc_bars.png`` and, per dataset, ``roc_<dataset>.png`` (runs of every-dataset
    families: test ROC of the first seed and mean validation AUC curves)."""
    plots.score_bars(rows, out / "auc_bars.png")
    for dataset in sorted({r["dataset"] for r in rows}):
        curves = []
        for name in [r["model"] for r in rows if r["dataset"] == dataset
                     and FAMILIES.get(entry(r["model"]).family, Family("")).every_dataset]:
            rs = [r for r in runs if r["dataset"] == dataset and r["model"] == name]
            probs, labels = test_predictions(rs[0])
            curves.append({"label": name, "seed": rs[0]["seed"], "probs": probs,
                           "labels": labels,
                           "val_curves": [r["val_auc_curve"] for r in rs]})
        plots.roc_and_validation_curves(curves, out / f"roc_{dataset}.png", dataset)


_SELECTION_KEYS = ("val_auc", "val_accuracy", "val_accuracy_max", "bank_common_share",
                   "attention_entropy")

#: What a selection can choose on (a key of each run summary, each seed's best over its
#: epochs): its name in sentences, in column headers, and the other p-value a table shows.
SELECTION_METRICS = {
    "val_auc": ("validation AUC", "AUC", "val_accuracy", "accuracy"),
    "val_accuracy_max": ("best validation accuracy", "best accuracy", "val_auc", "AUC"),
}


# what the paired t-tests cover: every metric and the other score its table shows
_PAIRED_KEYS = tuple(dict.fromkeys(key for metric, (_, _, other, _) in SELECTION_METRICS.items()
                                   for key in (metric, other)))


def _metric(metric: str) -> tuple[str, str, str, str]:
    if metric not in SELECTION_METRICS:
        raise ValueError(f"metric: expected one of {', '.join(SELECTION_METRICS)}, "
                         f"got {metric!r}")
    return SELECTION_METRICS[metric]


def _as_list(names: str | Sequence[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


def selection_rows(runs: list[dict], names: list[str],
                   references: str | Sequence[str]) -> list[dict]:
    """Per run name: the per-seed validation summaries, mean and sample std of
    :data:`_SELECTION_KEYS`, and paired t-tests over the seeds both have (same seeds:
    same initialisation stream and data order) against each of ``references``
    (``row["paired"][reference]``: seeds, mean differences and p-values)."""
    references = _as_list(references)
    rows = []
    for name in names:
        rs = sorted((r for r in runs if r["model"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        row = {"variant": name, "model": entry(name).model,
               "overrides": dict(entry(name).overrides), "seeds": len(rs), "runs": rs,
               "paired": {}}
        for key in _SELECTION_KEYS:
            values = [r[key] for r in rs if key in r]
            if values:
                row[f"{key}_mean"] = float(np.mean(values))
                row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                row[f"{key}_seeds"] = len(values)
        rows.append(row)
    for reference in references:
        ref = next((r for r in rows if r["variant"] == reference), None)
        by_seed = {run["seed"]: run for run in ref["runs"]} if ref else {}
        for row in rows:
            pairs = [(run, by_seed[run["seed"]]) for run in row["runs"]
                     if run["seed"] in by_seed]
            if row is ref or len(pairs) < 2:
                continue
            paired = row["paired"][reference] = {"seeds": len(pairs)}
            for key in _PAIRED_KEYS:
                test = stats.paired_t([x[key] for x, _ in pairs], [y[key] for _, y in pairs])
                paired[f"{key}_diff_mean"], paired[f"{key}_p"] = \
                    test["mean_difference"], test["p"]
    return rows


def _p(p) -> str:
    return "n/a" if p is None else f"{p:.3f}"


def selection_markdown(rows: list[dict], title: str, references: str | Sequence[str],
                       metric: str = "val_auc") -> str:
    """The selection table: ``metric`` (:data:`SELECTION_METRICS`) per seed, validation AUC
    and accuracy over seeds, best epochs, forward FLOPs, the last epoch's bank diagnostics,
    and per reference the paired mean ``metric`` difference with its p-value and the
    p-value of the other score (accuracy for AUC, AUC for accuracy); below the table, per
    reference, the ``metric`` p-values Holm-adjusted over the variants compared with it
    (:func:`experiments.stats.holm`)."""
    references = _as_list(references)
    _, short, other, other_short = _metric(metric)
    lines = [title, "",
             f"| variant | seeds | val {short} per seed | val AUC | val accuracy | best val "
             "accuracy (any epoch) | best epochs | forward MFLOPs | bank common share (last "
             "epoch) | attention entropy (nats) | "
             + " | ".join(f"vs `{ref}`: {short} difference (p) / {other_short} p"
                          for ref in references)
             + " |", "|---" * (10 + len(references)) + "|"]
    for r in rows:
        def fmt(key, r=r):
            if f"{key}_mean" not in r:
                return "-"
            part = "" if r.get(f"{key}_seeds", r["seeds"]) == r["seeds"] else \
                f" ({r[key + '_seeds']} of {r['seeds']} seeds)"
            return f"{r[key + '_mean']:.3f} +- {r[key + '_std']:.3f}{part}"

        def vs(ref, r=r):
            if ref not in r["paired"]:
                return "-"
            t = r["paired"][ref]
            return (f"{t[metric + '_diff_mean']:+.4f} ({_p(t[metric + '_p'])}) / "
                    f"{_p(t[other + '_p'])} ({t['seeds']} seeds)")
        per_seed = " / ".join(f"{x[metric]:.4f}" for x in r["runs"])
        epochs = ", ".join(str(x["best_epoch"]) for x in r["runs"])
        flops = sorted({f"{x['forward_flops'] / 1e6:.1f}" for x in r["runs"]
                        if x.get("forward_flops")}) or ["-"]
        lines.append(f"| `{r['variant']}` | {r['seeds']} | {per_seed} | {fmt('val_auc')} | "
                     f"{fmt('val_accuracy')} | {fmt('val_accuracy_max')} | {epochs} | "
                     f"{', '.join(flops)} | {fmt('bank_common_share')} | "
                     f"{fmt('attention_entropy')} | "
                     + " | ".join(vs(ref) for ref in references) + " |")
    lines += [line for ref in references if (line := _holm_line(rows, ref, metric, short))]
    return "\n".join(lines)


def _holm_line(rows: list[dict], reference: str, metric: str, short: str) -> str:
    """The paired p-values of every variant against ``reference``, Holm-adjusted over
    them (one family per reference); empty with fewer than two tests."""
    tests = [(r["variant"], r["paired"][reference][metric + "_p"]) for r in rows
             if reference in r["paired"] and r["paired"][reference][metric + "_p"] is not None]
    if len(tests) < 2:
        return ""
    adjusted = stats.holm([p for _, p in tests])
    return (f"\nPaired p of the {short} difference against `{reference}`, Holm-adjusted "
            f"over the {len(tests)} comparisons: "
            + ", ".join(f"`{name}` {_p(p)} -> {_p(q)}"
                        for (name, p), q in zip(tests, adjusted)) + ".")


def chosen_dynamic(rows: list[dict], metric: str = "val_auc") -> dict | None:
    """The row of the dynamic run with the highest mean ``metric`` (the selection's
    choice; :data:`SELECTION_METRICS`), or None without a dynamic run."""
    _metric(metric)
    dynamic = [r for r in rows if models.spec(r["model"]).dynamic]
    return max(dynamic, key=lambda r: r[f"{metric}_mean"], default=None)


def selection_headline(rows: list[dict], title: str, static: str,
                       metric: str = "val_auc") -> str:
    """One plain sentence: does the best dynamic form (:func:`chosen_dynamic`) beat
    ``static`` in mean ``metric`` with its banks apart (``bank_common_share`` < 0.5 at the
    last epoch), by how much and how sure (paired t-test over seeds)."""
    name = _metric(metric)[0]
    best = chosen_dynamic(rows, metric)
    ref = next((r for r in rows if r["variant"] == static), None)
    if best is None or ref is None:
        return f"{title}: no dynamic run and `{static}` both finished yet."
    paired = best["paired"].get(static)
    diff = (f"paired difference {paired[metric + '_diff_mean']:+.4f}, p "
            f"{_p(paired[metric + '_p'])} over {paired['seeds']} seeds" if paired
            else "no paired seeds")
    share = best.get("bank_common_share_mean")
    mean, std = best[f"{metric}_mean"], best[f"{metric}_std"]
    beats = mean > ref[f"{metric}_mean"] and share is not None and share < 0.5
    verdict = (f"`{best['variant']}` beats `{static}` in mean with its banks apart" if beats
               else f"no dynamic form beats `{static}` in mean {name} with its banks "
                    f"apart (bank common share < 0.5)")
    return (f"{title}: the best dynamic form by mean {name}, `{best['variant']}`, "
            f"{mean:.4f} +- {std:.4f} ({best['seeds']} seeds), "
            f"against {ref[metric + '_mean']:.4f} +- {ref[metric + '_std']:.4f} for "
            f"`{static}` ({diff}; bank common share "
            f"{'-' if share is None else f'{share:.2f}'}): {verdict}.")
