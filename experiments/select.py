"""Choose options on validation data only: variants x seeds, short schedules, no test split.

    python -m experiments.select --workdir runs/select --dataset breastmnist \\
        --variants p4m_gcnn dgcnn_wide dgcnn_wide_residual --seeds 0 1 2 \\
        [--set epochs=10 ...] [--workers 2]

Each run is ``python -m experiments.train`` with ``score_test=false`` (the test split is
not read) in ``<workdir>/<dataset>/<variant>/seed<N>``; finished runs are kept, so an
interrupted selection continues. ``--workers`` runs go at once (one per CPU core here).
Prints and writes ``selection_<dataset>.md`` and ``.json``: per variant, the best
validation AUC of each seed and the accuracy at that epoch (the checkpoint the trainer
keeps), the best accuracy of any epoch (mean +- sample std over seeds), the epoch of the
best AUC, and for dynamic models the last epoch's ``bank_common_share`` and
attention entropy averaged over the dynamic layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["Variant", "VARIANTS", "main"]


@dataclasses.dataclass(frozen=True)
class Variant:
    """A registered model and the config fields it sets."""

    model: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# The layer as it was before the selection (the first table in README): the attention
# sees the mean only, the lifting layer is dynamic, the temperature anneals over the
# epochs given on the command line (tau_anneal_fraction=0: tau_anneal_epochs).
_BEFORE = {"descriptor": "mean", "static_stem": False}
_RESIDUAL = {"parameterization": "residual"}
_CHOSEN = {"descriptor": "mean_max", "static_stem": True, "tau_anneal_fraction": 0.1}
VARIANTS = {
    "p4m_gcnn": Variant("p4m_gcnn"),
    "dgcnn_wide": Variant("p4m_dgcnn_wide", _BEFORE),  # the banks at the width of p4m_gcnn
    "dgcnn_wide_mixture": Variant("p4m_dgcnn_wide", {**_BEFORE, "bank_init": "mixture"}),
    "dgcnn_wide_residual": Variant("p4m_dgcnn_wide", {**_BEFORE, **_RESIDUAL}),
    "dgcnn_wide_residual_all": Variant("p4m_dgcnn_wide", {**_RESIDUAL, **_CHOSEN}),
    # the three changes without the residual form: today's defaults
    "dgcnn_wide_banks_all": Variant("p4m_dgcnn_wide", _CHOSEN),
    # one change at a time taken back from the defaults
    "dgcnn_wide_all_but_max": Variant("p4m_dgcnn_wide", {**_CHOSEN, "descriptor": "mean"}),
    "dgcnn_wide_all_but_stem": Variant("p4m_dgcnn_wide", {**_CHOSEN, "static_stem": False}),
    "dgcnn_wide_all_but_tau": Variant("p4m_dgcnn_wide", {**_CHOSEN,
                                                        "tau_anneal_fraction": 0.3333}),
    # controls at the defaults: one bank, and frozen random banks
    "dgcnn_wide_k1": Variant("p4m_dgcnn_wide", {**_CHOSEN, "num_kernels": 1}),
    "dgcnn_wide_frozen": Variant("p4m_dgcnn_wide", {**_CHOSEN, "freeze_banks": True}),
}


def _sets(variant: Variant, dataset: str, seed: int, extra: list[str]) -> list[str]:
    fields = {"model": variant.model, **variant.overrides, "dataset": dataset, "seed": seed,
              "score_test": False, "progress": False}
    return [*extra, *(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                      for k, v in fields.items())]


def _summary(work: pathlib.Path) -> dict:
    history = [json.loads(line) for line in (work / "metrics.jsonl").open()]
    best = max(history, key=lambda h: h["val_auc"])
    out = {"val_auc": best["val_auc"], "val_accuracy": best["val_accuracy"],
           "val_accuracy_max": max(h["val_accuracy"] for h in history),
           "best_epoch": best["epoch"], "epochs": len(history)}
    layers = history[-1].get("dynamic_layers")
    if layers:
        out["bank_common_share"] = float(np.mean([d["bank_common_share"] for d in layers]))
        out["attention_entropy"] = float(np.mean([d.get("attention_entropy", np.nan)
                                                  for d in layers]))
    return out


def _paired_tests(rows: list[dict], reference: str) -> None:
    """Add two-sided paired t-test p-values over the seeds both variants have (same seeds:
    same initialisation stream and data order) against ``reference``, in place."""
    from scipy import stats

    ref = next((r for r in rows if r["variant"] == reference), None)
    if ref is None:
        return
    by_seed = {run["seed"]: run for run in ref["runs"]}
    for row in rows:
        if row is ref:
            continue
        pairs = [(run, by_seed[run["seed"]]) for run in row["runs"] if run["seed"] in by_seed]
        if len(pairs) < 2:
            continue
        row["paired_vs"], row["paired_seeds"] = reference, len(pairs)
        for key in ("val_auc", "val_accuracy", "val_accuracy_max"):
            a = np.array([x[key] for x, _ in pairs])
            b = np.array([y[key] for _, y in pairs])
            row[f"{key}_diff_mean"] = float(np.mean(a - b))
            row[f"{key}_paired_p"] = (float(stats.ttest_rel(a, b).pvalue)
                                      if np.any(a != b) else 1.0)


def _fmt_p(row: dict) -> str:
    if "paired_vs" not in row:
        return "-"
    return (f"{row['val_auc_paired_p']:.3f} / {row['val_accuracy_paired_p']:.3f} "
            f"({row['paired_seeds']} seeds)")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/select")
    p.add_argument("--dataset", default="breastmnist")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reference", default="p4m_gcnn",
                   help="variant the others are compared with (paired over seeds)")
    args = p.parse_args(argv)
    from experiments.configs import get_config, override, validate

    for name in args.variants:  # bad settings: one line now, not a failed run later
        try:
            validate(override(get_config(), _sets(VARIANTS[name], args.dataset, 0, args.set)))
        except ValueError as err:
            p.error(f"{name}: {err}")
    root = pathlib.Path(args.workdir) / args.dataset
    queue = [(name, seed) for name in args.variants for seed in args.seeds
             if not (root / name / f"seed{seed}" / "results.json").is_file()]
    running: list[tuple[subprocess.Popen, str, int]] = []
    cores = os.sched_getaffinity(0)
    start = time.perf_counter()
    while queue or running:
        while queue and len(running) < args.workers:
            name, seed = queue.pop(0)
            free = sorted(set(range(args.workers)) - {slot for _, _, slot in running})[0]
            work = root / name / f"seed{seed}"
            cmd = [sys.executable, "-m", "experiments.train", "--workdir", str(work)]
            for item in _sets(VARIANTS[name], args.dataset, seed, args.set):
                cmd += ["--set", item]
            work.mkdir(parents=True, exist_ok=True)
            log = open(work / "train.log", "w")
            if args.workers > 1 and len(cores) >= args.workers:  # one core per run
                cmd = ["taskset", "-c", str(sorted(cores)[free]), *cmd]
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT),
                            f"{name}/seed{seed}", free))
            print(f"[{time.perf_counter() - start:6.0f} s] start {name} seed {seed}", flush=True)
        time.sleep(2)
        for entry in list(running):
            proc, label, _ = entry
            if proc.poll() is not None:
                running.remove(entry)
                print(f"[{time.perf_counter() - start:6.0f} s] done {label} (rc {proc.returncode})",
                      flush=True)
    rows = []
    for name in args.variants:
        runs = [{"seed": s, **_summary(root / name / f"seed{s}")} for s in args.seeds
                if (root / name / f"seed{s}" / "results.json").is_file()]
        if not runs:
            continue
        row = {"variant": name, "model": VARIANTS[name].model,
               "overrides": dict(VARIANTS[name].overrides), "seeds": len(runs), "runs": runs}
        for key in ("val_auc", "val_accuracy", "val_accuracy_max", "bank_common_share",
                    "attention_entropy"):
            values = [r[key] for r in runs if key in r]
            if values:
                row[f"{key}_mean"] = float(np.mean(values))
                row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    _paired_tests(rows, args.reference)
    lines = [f"selection on {args.dataset} validation ({' '.join(args.set) or 'default config'};"
             f" seeds {' '.join(map(str, args.seeds))})", "",
             "| variant | seeds | val AUC | val accuracy | best val accuracy (any epoch) | best "
             "epochs | bank common share (last epoch) | attention entropy (nats) | paired p vs "
             f"`{args.reference}` (AUC / accuracy) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def fmt(key, r=r):
            if f"{key}_mean" not in r:
                return "-"
            return f"{r[key + '_mean']:.3f} +- {r[key + '_std']:.3f}"
        lines.append(f"| `{r['variant']}` | {r['seeds']} | {fmt('val_auc')} | "
                     f"{fmt('val_accuracy')} | {fmt('val_accuracy_max')} | {', '.join(str(x['best_epoch']) for x in r['runs'])}"
                     f" | {fmt('bank_common_share')} | {fmt('attention_entropy')} | "
                     f"{_fmt_p(r)} |")
    table = "\n".join(lines)
    out = pathlib.Path(args.workdir)
    (out / f"selection_{args.dataset}.md").write_text(table + "\n")
    (out / f"selection_{args.dataset}.json").write_text(json.dumps(rows, indent=2))
    print(table)
    return rows


if __name__ == "__main__":
    main()
