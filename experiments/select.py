"""Choose options on validation data only: variants x seeds, short schedules, no test split.

    python -m experiments.select --workdir runs/select --dataset breastmnist \\
        --variants p4m_gcnn dgcnn_wide dgcnn_wide_residual --seeds 0 1 2 \\
        [--set epochs=10 ...] [--workers 2]

A front end of the sweep engine (:mod:`experiments.sweep`): each variant is a named run
of the registry (default: the ``selection`` family and ``p4m_gcnn``), trained with
``score_test=false`` (the test split is not read) in
``<workdir>/<dataset>/<variant>/seed<N>``; finished runs are kept, so an interrupted
selection continues (``--no-train`` tabulates the finished runs only). ``--workers``
training processes go at once, each pinned to a core (one per CPU core here). Prints and
writes ``selection_<dataset>.md`` and ``.json``: per variant, the best validation AUC of
each seed and the accuracy at that epoch (the checkpoint the trainer keeps), the best
accuracy of any epoch (mean +- sample std over seeds), the epoch of the best AUC, for
dynamic models the last epoch's ``bank_common_share`` and attention entropy averaged over
the dynamic layers, and paired t-tests over seeds against each ``--reference`` (default
``p4m_gcnn``). ``--metric val_accuracy_max`` compares each seed's best validation accuracy
instead of its best AUC (per-seed column, differences, headline) where the AUC is
saturated (PBC's 8-class macro AUC is above 0.997 from the second epoch). With
``--records results/runs`` a variant's seed that the results protocol already trained
with the same config is taken from its committed run record (training does not depend on
``score_test``; the selection reads the record's validation scores only and writes no
record).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from experiments import cli, sweep
from experiments.configs import get_config, override, validate

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = cli.Parser(__doc__)
    p.add_argument("--workdir", default="runs/select")
    p.add_argument("--dataset", default="breastmnist")
    p.add_argument("--variants", nargs="+", default=list(sweep.SELECTION_RUNS),
                   help="run names of the sweep registry or registered models (default: "
                        f"{' '.join(sweep.SELECTION_RUNS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--workers", type=int, default=2,
                   help="training processes at a time, each pinned to a core (>= 1)")
    p.add_argument("--reference", nargs="+", default=["p4m_gcnn"],
                   help="variants the others are compared with (paired over seeds; "
                        "default: the static p4m G-CNN)")
    p.add_argument("--metric", default="val_auc", choices=list(sweep.SELECTION_METRICS),
                   help="what the table's per-seed column, paired differences and headline "
                        "compare, each seed's best over its epochs (default val_auc; "
                        "val_accuracy_max where the AUC is saturated, as on PBC)")
    p.add_argument("--no-train", action="store_true",
                   help="tabulate the finished runs only (while others train)")
    p.add_argument("--records", default=None, metavar="DIR",
                   help="take a variant's seed from its run record here where one exists "
                        "(e.g. results/runs: the protocol's run, same config; only its "
                        "validation scores are read) instead of training it again")
    p.add_argument("--results", default=None, metavar="PATH",
                   help="also write the table's data here (e.g. results/idc_selection.json; "
                        "a generated block of kind 'selection' renders it)")
    return p


def main(argv=None) -> list[dict]:
    p = _parser()
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers: expected a number of processes >= 1, got {args.workers}")
    for ref in args.reference:
        if ref not in args.variants:
            p.error(f"--reference: {ref!r} is not one of --variants ({' '.join(args.variants)})")
    base = override(get_config(), [*args.set, "progress=false"])
    pairs = [(args.dataset, name) for name in args.variants]
    for _, name in pairs:  # bad names or settings: one line now, not a failed run later
        try:
            validate(sweep.Task(args.dataset, name, 0, validation_only=True).config(base))
        except ValueError as err:
            p.error(f"{name}: {err}")
    plan = sweep.Sweep(pathlib.Path(args.workdir), {args.dataset: list(args.seeds)},
                       mode="pool", workers=args.workers, d4=False, validation_only=True,
                       no_train=args.no_train,
                       records=pathlib.Path(args.records) if args.records else None)
    runs, missing = sweep.run(plan, base, pairs)
    if missing:
        print(f"not finished (see each run's train.log): {', '.join(missing)}")
    rows = sweep.selection_rows(runs, list(args.variants), args.reference)
    title = (f"selection on {args.dataset} validation ({' '.join(args.set) or 'default config'}"
             f"; seeds {' '.join(map(str, args.seeds))})")
    table = sweep.selection_markdown(rows, title, args.reference, args.metric)
    out = pathlib.Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)  # none yet where every run came from records
    (out / f"selection_{args.dataset}.md").write_text(table + "\n")
    (out / f"selection_{args.dataset}.json").write_text(json.dumps(rows, indent=2))
    if args.results:
        doc = {"title": title, "references": args.reference, "metric": args.metric,
               "missing": missing,
               "rows": [{**r, "runs": [{k: v for k, v in run.items() if k != "workdir"}
                                       for run in r["runs"]]} for r in rows]}
        path = pathlib.Path(args.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {path}")
    print(table)
    return rows


if __name__ == "__main__":
    cli.run(main, "experiments.select")
