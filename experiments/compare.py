"""Sweep: train named runs over seeds and datasets; tables, statistics and plots.

    python -m experiments.compare                       # the full protocol, resumable
    python -m experiments.compare --workdir runs/compare \\
        [--datasets breastmnist pneumoniamnist] [--models cnn p4_gcnn ...] \\
        [--seeds 0 1 2 3 4] [--ablations ...] [--set epochs=30 ...] [--tune FIELD=V1,V2] \\
        [--workers 2]
    python -m experiments.compare --fractions 0.01 0.05 0.2 1 ...   # learning curves

With no options: the full protocol. PBC, BreastMNIST and PneumoniaMNIST; the runs of
``PROTOCOL_RUNS`` (:mod:`experiments.sweep.registry`); seeds 0-4 (0-9 on BreastMNIST);
the learning rate chosen per dataset and run on validation AUC from ``PROTOCOL_TUNE``
with 2 validation-only seeds each (the same grid and budget for every run);
``results/accelerator/<dataset>.json`` with per-seed test metrics and the paired tests
(:mod:`experiments.report`; a folder of its own, so that it never overwrites the files the
CPU protocol builds from the run records, :mod:`experiments.results`). Naming
``--models`` runs those only, without tuning unless ``--tune`` asks.

Every run is a training work directory ``<workdir>/<dataset>/<name>/seed<N>`` (best
epoch on validation AUC, the test split read once with the best checkpoint); a finished
run is not trained again, so an interrupted sweep continues where it stopped. Each
trained model is then scored on all 8 D4-transformed copies of the test split. Runs
train one by one in this process, the seeds of a run together (``--seeds-together``, by
default on an accelerator), or ``--workers`` processes at a time pinned to cores.
``--no-train`` builds the tables and plots from the finished runs only.

Writes ``results.json`` and ``results.md`` (per dataset and family: validation AUC at
the best epoch, mean +- std over seeds of test AUC, accuracy, balanced accuracy and NLL,
parameters, forward FLOPs, training time, D4 spread), ``auc_bars.png``,
``roc_<dataset>.png`` and, from the first ``p4m_dgcnn`` run, the attention and
equivariance figures of :mod:`experiments.figures`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

from experiments import cli, curves, report, sweep
from experiments.configs import Config, get_config, override, validate
from experiments.sweep import execute

__all__ = ["ACCELERATOR_RESULTS", "parse_args", "seeds_of", "plan_of", "run_dirs", "finished",
           "main"]

ACCELERATOR_RESULTS = "results/accelerator"
"""Where the full protocol (no options) writes ``<dataset>.json`` by default."""

finished = sweep.finished


def _parser() -> argparse.ArgumentParser:
    p = cli.Parser(__doc__)
    p.add_argument("--workdir", default="runs/compare")
    p.add_argument("--datasets", nargs="+", default=None,
                   help="default: breastmnist pneumoniamnist (learning curves: pbc)")
    p.add_argument("--models", nargs="+", default=None,
                   help="run names (experiments.sweep.registry.RUNS) or registered models "
                        "(default: every run of the every-dataset families, plus the "
                        f"ablations; learning curves: {' '.join(sweep.CURVE_RUNS)})")
    p.add_argument("--fractions", nargs="+", type=float, default=None, metavar="F",
                   help="learning curves: train every run on these class-stratified "
                        "fractions of the training split, into <workdir>/fraction<F>, all "
                        f"for the same steps (unless --set overrides: "
                        f"{' '.join(sweep.CURVE_SETTINGS)}); writes curves.json, "
                        "curves.md and curves.png with intervals and paired tests")
    p.add_argument("--results-dir", default=None, metavar="DIR",
                   help="also write DIR/<dataset>.json per dataset: per-seed test metrics, "
                        "spreads, parameters, FLOPs, train time, machine and the paired "
                        "tests (experiments.report; not with --fractions)")
    p.add_argument("--results", default=None, metavar="PATH",
                   help="learning curves: also write the summary JSON here "
                        "(e.g. results/pbc_curves.json)")
    p.add_argument("--figure", default=None, metavar="PATH",
                   help="learning curves: also write the plot here (e.g. docs/pbc_curves.png)")
    p.add_argument("--ablations", nargs="*", default=None,
                   help=f"ablations and readout variants to run on --ablation-dataset (no "
                        f"names: all of {', '.join(_ablation_dataset_runs())})")
    p.add_argument("--ablation-dataset", default="breastmnist")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="default: 0-4, and 0-9 on breastmnist (its test split has 156 "
                        "images)")
    p.add_argument("--tune", default=None, metavar="FIELD=V1,V2,...",
                   help="choose this config field per dataset and run name on validation "
                        "AUC (mean over --tune-seeds, validation-only runs in "
                        "<workdir>/tune) before the seeds are trained with the chosen "
                        f"value; the same grid for every run (default with neither --models "
                        f"nor --fractions: {sweep.PROTOCOL_TUNE}; 'none': no tuning)")
    p.add_argument("--tune-seeds", nargs="+", type=int, default=[100, 101])
    p.add_argument("--set", action="append", default=["progress=false"], metavar="KEY=VALUE")
    p.add_argument("--seeds-together", choices=("auto", "yes", "no"), default="auto",
                   help="train a run's unfinished seeds together, one program per step or "
                        "epoch (the device pipeline): auto = on an accelerator, not on the "
                        "CPU, where it was measured slower than one by one")
    p.add_argument("--workers", type=int, default=1,
                   help="> 1: that many training processes at a time, each pinned to a core "
                        "(one per core on a CPU machine)")
    p.add_argument("--records", default=None, metavar="DIR",
                   help="keep run records: write DIR/<dataset>/<run>/seed<N>.json when a "
                        "run is done, and treat a run with a record as done "
                        "(experiments.sweep.records; the protocol: results/runs)")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: tables and plots from the finished runs only "
                        "(the missing ones are listed)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = _parser()
    args = p.parse_args(argv)
    protocol = not args.fractions and args.models is None
    if args.datasets is None:
        args.datasets = (["pbc"] if args.fractions else
                         list(sweep.PROTOCOL_DATASETS) if protocol else
                         ["breastmnist", "pneumoniamnist"])
    if protocol:
        args.models = list(sweep.PROTOCOL_RUNS)
        args.results_dir = args.results_dir or ACCELERATOR_RESULTS
    if args.tune is None and protocol:
        args.tune = sweep.PROTOCOL_TUNE
    if args.tune in (None, "none", ""):
        args.tune = None
    else:
        field, _, values = args.tune.partition("=")
        if field not in Config.__dataclass_fields__ or not values:
            p.error(f"--tune {args.tune!r}: expected FIELD=V1,V2,... with a config field, "
                    f"e.g. {sweep.PROTOCOL_TUNE}")
        args.tune = (field, values.split(","))
    if args.workers < 1:
        p.error(f"--workers: expected a number of processes >= 1, got {args.workers}")
    if args.fractions:
        bad = [f for f in args.fractions if not 0 < f <= 1]
        if bad:
            p.error(f"--fractions: expected fractions in (0, 1], got {bad}")
        if args.models is None:
            args.models = list(sweep.CURVE_RUNS)
        if args.results_dir:
            p.error("--results-dir: a learning-curve sweep writes one file (--results)")
        if args.records:
            p.error("--records: run records are kept for whole-split runs, not learning "
                    "curves")
    elif args.results or args.figure:
        p.error("--results and --figure are for learning curves (--fractions)")
    return args


def seeds_of(args: argparse.Namespace, dataset: str) -> list[int]:
    """The evaluation seeds of a dataset: ``--seeds``, else 0-4 (0-9 on breastmnist)."""
    if args.seeds is not None:
        return list(args.seeds)
    return list(range(10 if dataset == "breastmnist" else 5))


def _ablation_dataset_runs() -> list[str]:
    return [n for n, run in sweep.RUNS.items()
            if run.family in ("ablations", "orientation")]


def plan_of(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The ``(dataset, name)`` pairs a command line asks for, in order."""
    if getattr(args, "fractions", None) or args.models == list(sweep.PROTOCOL_RUNS):
        # learning curves, the protocol: the ablations only when asked (no names: all)
        ablations = _ablation_dataset_runs() if args.ablations == [] else args.ablations or []
    else:
        ablations = (_ablation_dataset_runs() if args.ablations == [] or
                     (args.ablations is None and args.models is None) else args.ablations or [])
    names = args.models or [n for n, run in sweep.RUNS.items()
                            if sweep.FAMILIES[run.family].every_dataset]
    plan = [(d, m) for d in args.datasets for m in names]
    plan += [(args.ablation_dataset, a) for a in ablations
             if (args.ablation_dataset, a) not in plan]
    return plan


def run_dirs(argv) -> list[pathlib.Path]:
    """The work directory of every run a command line asks for."""
    args = parse_args(argv)
    return [t.workdir(args.workdir).path
            for t in sweep.tasks(plan_of(args), lambda d: seeds_of(args, d),
                                 fractions=args.fractions)]


def _base(args: argparse.Namespace) -> Config:
    base = override(get_config(), [*(sweep.CURVE_SETTINGS if args.fractions else ()),
                                   *args.set])
    if base.seeds:
        raise ValueError("seeds: the sweep takes its seeds from --seeds (and trains them "
                         "together with --seeds-together)")
    if not base.score_test:
        raise ValueError("score_test: the sweep reports test metrics; use experiments.select "
                         "for validation-only runs")
    return base


def _sweep_of(args: argparse.Namespace, *, d4: bool) -> sweep.Sweep:
    together = {"yes": "together", "no": "process"}.get(args.seeds_together,
                                                        execute.default_mode())
    return sweep.Sweep(pathlib.Path(args.workdir), {d: seeds_of(args, d) for d in args.datasets
                                                    + [args.ablation_dataset]},
                       args.tune, tuple(args.tune_seeds), args.no_train,
                       "pool" if args.workers > 1 else together, args.workers, d4,
                       records=pathlib.Path(args.records) if args.records else None)


def _settings(args: argparse.Namespace, base: Config, missing: list[str], drop) -> dict:
    return {"seeds": {d: seeds_of(args, d) for d in args.datasets},
            "config": {k: v for k, v in dataclasses.asdict(base).items() if k not in drop},
            "selection": "best epoch on validation AUC; test split read once",
            "missing": missing}


def _collect(args, base: Config, plan, fractions) -> tuple[list[dict], list[str]]:
    for f in fractions:  # fail on bad names or settings before any training
        for dataset, name in plan:
            frac = base if f is None else dataclasses.replace(base, train_fraction=f)
            validate(sweep.run_config(frac, dataset, name, 0))
    pathlib.Path(args.workdir).mkdir(parents=True, exist_ok=True)
    plan_sweep = _sweep_of(args, d4=fractions == [None])
    runs, missing = [], []
    for f in fractions:
        got, lost = sweep.run(plan_sweep, base, plan, fraction=f,
                              label="" if f is None else f"fraction {f:g} ")
        runs, missing = runs + got, missing + lost
    if missing:
        print(f"not finished (--no-train): {', '.join(missing)}")
    stopped = [f"{r['dataset']}/{r['model']}/seed{r['seed']}" for r in runs
               if not r["finished"]]
    if stopped:
        print(f"stopped before the end of their schedule (max_steps; run again without it "
              f"to finish them): {', '.join(stopped)}")
    if not runs:
        raise SystemExit(f"no finished runs in {args.workdir}")
    return runs, missing


def learning_curves(args: argparse.Namespace) -> dict:
    """The ``--fractions`` sweep: every run at every fraction; writes ``curves.json``,
    ``curves.md`` and ``curves.png`` (and ``--results`` / ``--figure``)."""
    base = _base(args)
    runs, missing = _collect(args, base, plan_of(args), list(args.fractions))
    settings = {"fractions": args.fractions, "datasets": args.datasets, "models": args.models,
                **_settings(args, base, missing, ("train_fraction", "seed", "dataset",
                                                  "model")),
                "steps": base.epochs * base.steps_per_epoch}
    return curves.write(curves.document(runs, settings), pathlib.Path(args.workdir),
                        args.results, args.figure)


def main(argv=None):
    args = parse_args(argv)
    if args.fractions:
        return learning_curves(args)
    base = _base(args)
    out = pathlib.Path(args.workdir)
    runs, missing = _collect(args, base, plan_of(args), [None])
    rows = sweep.summarize(runs)
    (out / "results.json").write_text(json.dumps({"runs": runs, "summary": rows}, indent=2))
    if args.results_dir:
        settings = {**_settings(args, base, missing, ("seed", "dataset", "model")),
                    "tune": None if not args.tune else {"field": args.tune[0],
                                                        "values": args.tune[1],
                                                        "seeds": args.tune_seeds}}
        for path in report.write_results(runs, args.results_dir, settings,
                                         order=list(sweep.RUNS)):
            print(f"wrote {path}")
    table = sweep.markdown(rows)
    (out / "results.md").write_text(table + "\n")
    sweep.write_plots(runs, rows, out)
    first = [r for r in runs if r["model"] == "p4m_dgcnn" and "workdir" in r]
    if first:  # its checkpoint: a run known from its record alone has none here
        from experiments import figures
        figures.attention_figure(first[0]["workdir"], out / "attention.png")
        figures.equivariance_figure(first[0]["workdir"], out / "equivariance.png")
    print(table)
    return rows


if __name__ == "__main__":
    cli.run(main, "experiments.compare")
