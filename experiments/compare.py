"""Sweep: train model families over seeds and datasets; tables, statistics and plots.

    python -m experiments.compare                       # the full protocol, resumable
    python -m experiments.compare --workdir runs/compare \\
        [--datasets breastmnist pneumoniamnist] [--models cnn p4_gcnn ...] \\
        [--seeds 0 1 2 3 4] [--ablations ...] [--set epochs=30 ...] [--tune FIELD=V1,V2]
    python -m experiments.compare --fractions 0.01 0.05 0.2 1 ...   # learning curves

With no options: the full protocol. PBC, BreastMNIST and PneumoniaMNIST
(:data:`PROTOCOL_DATASETS`); the runs of :data:`PROTOCOL_RUNS`; seeds 0-4 (0-9 on
BreastMNIST); the learning rate chosen per dataset and run on validation AUC from
:data:`PROTOCOL_TUNE` with 2 validation-only seeds each (the same grid and budget for
every run); ``results/<dataset>.json`` with per-seed test metrics and the paired tests
(:mod:`experiments.report`). Naming ``--models`` runs those only, without tuning unless
``--tune`` asks.

Every run is a ``train_and_evaluate`` work directory ``<workdir>/<dataset>/<name>/seed<N>``
(the best epoch is chosen on validation AUC, the test split is read once with the best
checkpoint); a finished run is not trained again, so an interrupted sweep continues
where it stopped. Each trained model is then scored on all 8 D4-transformed copies of
the test split (robustness). With ``--seeds-together`` (by default on an accelerator)
the unfinished seeds of a run train together as one program per epoch
(:func:`experiments.train.train_seeds`, into the same ``seed<N>`` folders).

The sweep is typed data: :data:`RUNS` maps each run name to a :class:`Run` (registered
model, the config fields it overrides, applied with ``dataclasses.replace``, and its
family); :data:`FAMILIES` gives each family's table title, the runs of other families
shown beside it, and whether it runs on every dataset. ``name`` is a key of
:data:`RUNS` (the parameter- and FLOP-matched families; the ``cnn_augment`` control, the
plain CNN on random D4 transforms; ablations of the dynamic p4m G-CNN: K in {1, 2, 8},
equivariant attention, no temperature annealing; the orientation-aware readout variants
``<model>_orient`` with ``cnn_lr1e-2``) or any registered model. The ablations and
readout variants run on ``--ablation-dataset`` when named with ``--ablations``.
``--no-train`` builds the tables and plots from the finished runs only.

Writes ``results.json`` and ``results.md`` (per dataset: parameter-matched, FLOP-matched
and ablation tables with validation AUC at the best epoch, mean +- std over seeds of test
AUC (macro one-vs-rest for more than 2 classes), accuracy, balanced accuracy and NLL,
parameters, forward FLOPs, training time, D4 spread),
``auc_bars.png``, ``roc_<dataset>.png`` (test ROC, macro-averaged over classes for
multi-class data, of each model's first seed and mean validation-AUC curves) and, from the first ``p4m_dgcnn`` run, the attention and
equivariance figures of :mod:`experiments.figures`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from dgcnn_jax import models
from experiments import configs, curves, evaluate, plots, report, train
from experiments.configs import Config, get_config, model_kwargs, override, validate

__all__ = ["Family", "Run", "FAMILIES", "RUNS", "PROTOCOL_DATASETS", "PROTOCOL_RUNS",
           "PROTOCOL_TUNE", "seeds_of", "tune", "run_of", "run_config", "run_one", "finished",
           "SCORES", "summarize", "sections", "markdown", "write_plots", "parse_args", "plan_of", "run_dirs", "learning_curves", "main"]


@dataclasses.dataclass(frozen=True)
class Family:
    """A table of results.md: its title, the runs of other families shown beside its own
    (first), and whether its runs belong to every dataset of a sweep or to
    ``--ablation-dataset`` only."""

    title: str
    references: tuple[str, ...] = ()
    every_dataset: bool = True


@dataclasses.dataclass(frozen=True)
class Run:
    """A sweep entry: a registered model, the config fields it sets, its family."""

    model: str
    family: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


PROTOCOL_DATASETS = ("pbc", "breastmnist", "pneumoniamnist")
"""The datasets of the full protocol (``python -m experiments.compare`` with no options):
PBC first, where D4 invariance is the right prior."""

PROTOCOL_RUNS = ("cnn", "cnn_augment", "p4_gcnn", "p4m_gcnn", "p4m_dgcnn_wide", "p4m_dgcnn",
                 "p4m_dgcnn_wide_k1", "p4m_dgcnn_wide_frozen")
"""The runs of the full protocol: the CNN with and without D4 augmentation, the static
G-CNNs, the dynamic p4m G-CNN at the width of the static one (the primary comparison)
and parameter-matched, and its one-bank and frozen-bank controls."""

PROTOCOL_TUNE = "learning_rate=0.001,0.003,0.01"
"""What the full protocol chooses per dataset and run on validation AUC (2 seeds each),
the same grid and budget for every run."""

# Learning rate of the orientation-aware readout variants, chosen on validation AUC for
# p4m_dgcnn_orient (seeds 0-1; README "Results").
ORIENTED_LEARNING_RATE = 0.01

FAMILIES = {
    "parameter-matched": Family("parameter-matched"),
    "flop-matched": Family(
        "FLOP-matched (dynamic nets at the width of their static counterparts)",
        references=("p4_gcnn", "p4m_gcnn")),
    "ablations": Family(
        "ablations of the dynamic p4m G-CNN (K kernels, attention, temperature annealing)",
        references=("p4m_dgcnn",), every_dataset=False),
    "orientation": Family(
        "orientation-aware readout (equivariant layers; the head sees every group element, "
        "so the logits are not invariant; learning rate 1e-2)",
        references=("cnn",), every_dataset=False),
}

RUNS = {
    "cnn": Run("cnn", "parameter-matched"),
    # control: the plain CNN trained on random D4 transforms (what symmetry alone gives)
    "cnn_augment": Run("cnn", "parameter-matched", {"augment": True}),
    "p4_gcnn": Run("p4_gcnn", "parameter-matched"),
    "p4m_gcnn": Run("p4m_gcnn", "parameter-matched"),
    "p4_dgcnn": Run("p4_dgcnn", "parameter-matched"),
    "p4m_dgcnn": Run("p4m_dgcnn", "parameter-matched"),  # K=4, invariant, annealed
    "p4_dgcnn_wide": Run("p4_dgcnn_wide", "flop-matched"),
    "p4m_dgcnn_wide": Run("p4m_dgcnn_wide", "flop-matched"),
    # controls at the same width: one bank (no mixing), and K frozen random banks mixed
    # by a trained attention (what mixing untrained kernels gives)
    "p4m_dgcnn_wide_k1": Run("p4m_dgcnn_wide", "flop-matched", {"num_kernels": 1}),
    "p4m_dgcnn_wide_frozen": Run("p4m_dgcnn_wide", "flop-matched", {"freeze_banks": True}),
    "p4m_dgcnn_k1": Run("p4m_dgcnn", "ablations", {"num_kernels": 1}),
    "p4m_dgcnn_k2": Run("p4m_dgcnn", "ablations", {"num_kernels": 2}),
    "p4m_dgcnn_k8": Run("p4m_dgcnn", "ablations", {"num_kernels": 8}),
    "p4m_dgcnn_equivariant": Run("p4m_dgcnn", "ablations", {"attention": "equivariant"}),
    "p4m_dgcnn_no_anneal": Run("p4m_dgcnn", "ablations",
                               {"tau_initial": 1.0, "tau_final": 1.0}),
    # the CNN at the learning rate of the orientation-aware G-CNNs
    "cnn_lr1e-2": Run("cnn", "orientation", {"learning_rate": ORIENTED_LEARNING_RATE}),
    **{f"{m}_orient": Run(m, "orientation", {"readout": "orientation",
                                             "learning_rate": ORIENTED_LEARNING_RATE})
       for m in ("p4_gcnn", "p4m_gcnn", "p4_dgcnn", "p4m_dgcnn")},
}
"""Every named sweep run, in table order. A registered model that is not named here
runs as itself (family ``"other"``)."""


def run_of(name: str) -> Run:
    """The :class:`Run` of a sweep name or registered model; ``ValueError`` otherwise."""
    if name in RUNS:
        return RUNS[name]
    if name in models.available():
        return Run(name, "other")
    raise ValueError(f"model: unknown model or sweep run {name!r}; known: "
                     f"{', '.join(RUNS)}, or a registered model: "
                     f"{', '.join(models.available())}")


def run_config(base: Config, dataset: str, name: str, seed: int) -> Config:
    """The config of one run: ``base`` with the run's overrides, dataset, model and seed."""
    run = run_of(name)
    return dataclasses.replace(base, **run.overrides, dataset=dataset, model=run.model,
                               seed=seed)


def run_one(base: Config, dataset: str, name: str, seed: int, workdir: pathlib.Path, *,
            d4: bool = True) -> dict:
    """Train (unless finished) and score one run (``d4``: also on the 8 D4 copies of the
    test split); returns its summary."""
    work = workdir / dataset / name / f"seed{seed}"
    config = run_config(base, dataset, name, seed)
    if (work / "results.json").is_file():
        changed = train.config_differences(json.loads((work / "config.json").read_text()),
                                           config)
        if changed:
            raise ValueError(f"{work} was trained with another config ({'; '.join(changed)}): "
                             f"use another --workdir for these settings, or delete the run")
        results = json.loads((work / "results.json").read_text())
    else:
        results = train.train_and_evaluate(config, work)
    robust_path = work / "eval_test.json"
    robust = (json.loads(robust_path.read_text()) if robust_path.is_file()
              else evaluate.evaluate(work, "test", d4=True) if d4 else None)
    history = [json.loads(line) for line in (work / "metrics.jsonl").open()]
    flops = results.get("forward_flops")
    if flops is None:  # runs trained before results.json recorded it
        flops = models.flops_per_image(config.model, num_classes=len(results["val"]
                                       ["confusion_matrix"]), **model_kwargs(config))
    return {"dataset": dataset, "model": name, "seed": seed, "workdir": str(work),
            "val_auc": results["val"]["auc"],
            **{f"test_{key}": results["test"][key] for key in SCORES},
            "num_params": results["num_params"], "forward_flops": flops,
            "train_seconds": results["train_seconds"],
            "best_epoch": results["best_epoch"],
            "train_fraction": config.train_fraction, "num_train": results.get("num_train"),
            "backend": results.get("backend"),
            **({"d4_auc_min": robust["d4"]["auc_min"], "d4_auc_max": robust["d4"]["auc_max"]}
               if robust else {}),
            "val_auc_curve": [h["val_auc"] for h in history]}


def train_together(base: Config, dataset: str, name: str, seeds: list[int],
                   workdir: pathlib.Path, mode: str = "auto") -> None:
    """Train the unfinished seeds of run ``name`` together (``train.train_seeds`` in
    ``<workdir>/<dataset>/<name>``) where ``mode`` and the run's pipeline allow; first a
    stored, unfinished seed set there. :func:`run_one` then finds the seeds trained."""
    config = run_config(base, dataset, name, seeds[0])
    if mode == "no" or (mode == "auto" and jax.default_backend() == "cpu") or \
            configs.pipeline(config) != "device":
        return
    work = workdir / dataset / name
    stored = train.stored_seeds(work)
    if stored and not all(finished(work / f"seed{s}") for s in stored):
        print(f"== {dataset} {name} seeds {','.join(map(str, stored))} (resuming together)",
              flush=True)
        train.train_seeds(dataclasses.replace(config, seeds=",".join(map(str, stored))), work)
    todo = [s for s in seeds if not finished(work / f"seed{s}")]
    if len(todo) > 1:
        print(f"== {dataset} {name} seeds {','.join(map(str, todo))} (together)", flush=True)
        train.train_seeds(dataclasses.replace(config, seeds=",".join(map(str, todo))), work)


def finished(work: pathlib.Path, *, scored: bool = False) -> bool:
    """Trained and tested, and either D4-scored or with the checkpoint to score it
    (``scored``: D4-scored)."""
    best = work / "checkpoints" / "best"
    return (work / "results.json").is_file() and (
        (work / "eval_test.json").is_file()
        or (not scored and best.is_dir() and any(s.name.isdigit() for s in best.iterdir())))


SCORES = ("auc", "accuracy", "balanced_accuracy", "nll")
"""Test metrics summarised per run name (mean and sample std over seeds)."""


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (dataset, run name): mean and spread over seeds, in table order."""
    rows = []
    keys = sorted({(r["dataset"], r["model"]) for r in runs},
                  key=lambda k: (k[0], _order(k[1])))
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


def _order(name: str) -> int:
    names = list(RUNS)
    return names.index(name) if name in names else len(names)


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
                     and FAMILIES.get(run_of(r["model"]).family, Family("")).every_dataset]:
            rs = [r for r in runs if r["dataset"] == dataset and r["model"] == name]
            work = pathlib.Path(rs[0]["workdir"])
            curves.append({"label": name, "seed": rs[0]["seed"],
                           "probs": np.load(work / "test_probs.npy"),
                           "labels": np.load(work / "test_labels.npy"),
                           "val_curves": [r["val_auc_curve"] for r in rs]})
        plots.roc_and_validation_curves(curves, out / f"roc_{dataset}.png", dataset)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/compare")
    p.add_argument("--datasets", nargs="+", default=None,
                   help="default: breastmnist pneumoniamnist (learning curves: pbc)")
    p.add_argument("--models", nargs="+", default=None,
                   help="run names (RUNS) or registered models (default: every run of the "
                        "every-dataset families, plus the ablations; learning curves: "
                        f"{' '.join(curves.CURVE_RUNS)})")
    p.add_argument("--fractions", nargs="+", type=float, default=None, metavar="F",
                   help="learning curves: train every run on these class-stratified "
                        "fractions of the training split, into <workdir>/fraction<F>, all "
                        f"for the same steps (unless --set overrides: "
                        f"{' '.join(curves.CURVE_SETTINGS)}); writes curves.json, "
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
                        f"nor --fractions: {PROTOCOL_TUNE}; 'none': no tuning)")
    p.add_argument("--tune-seeds", nargs="+", type=int, default=[100, 101])
    p.add_argument("--set", action="append", default=["progress=false"], metavar="KEY=VALUE")
    p.add_argument("--seeds-together", choices=("auto", "yes", "no"), default="auto",
                   help="train a run's unfinished seeds together, one program per epoch "
                        "(train.train_seeds; the device pipeline): auto = on an accelerator, "
                        "not on the CPU, where it was measured slower than one by one")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: tables and plots from the finished runs only "
                        "(the missing ones are listed)")
    args = p.parse_args(argv)
    protocol = not args.fractions and args.models is None
    if args.datasets is None:
        args.datasets = (["pbc"] if args.fractions else
                         list(PROTOCOL_DATASETS) if protocol else
                         ["breastmnist", "pneumoniamnist"])
    if protocol:
        args.models = list(PROTOCOL_RUNS)
        args.results_dir = args.results_dir or "results"
    if args.tune is None and protocol:
        args.tune = PROTOCOL_TUNE
    if args.tune in (None, "none", ""):
        args.tune = None
    else:
        field, _, values = args.tune.partition("=")
        if field not in Config.__dataclass_fields__ or not values:
            p.error(f"--tune {args.tune!r}: expected FIELD=V1,V2,... with a config field, "
                    f"e.g. {PROTOCOL_TUNE}")
        args.tune = (field, values.split(","))
    if args.fractions:
        bad = [f for f in args.fractions if not 0 < f <= 1]
        if bad:
            p.error(f"--fractions: expected fractions in (0, 1], got {bad}")
        if args.models is None:
            args.models = list(curves.CURVE_RUNS)
    elif args.results or args.figure:
        p.error("--results and --figure are for learning curves (--fractions)")
    if args.fractions and args.results_dir:
        p.error("--results-dir: a learning-curve sweep writes one file (--results)")
    return args


def seeds_of(args: argparse.Namespace, dataset: str) -> list[int]:
    """The evaluation seeds of a dataset: ``--seeds``, else 0-4 (0-9 on breastmnist)."""
    if args.seeds is not None:
        return list(args.seeds)
    return list(range(10 if dataset == "breastmnist" else 5))


def _ablation_dataset_runs() -> list[str]:
    return [n for n, run in RUNS.items() if not FAMILIES[run.family].every_dataset]


def plan_of(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The ``(dataset, name)`` pairs a command line asks for, in order."""
    if getattr(args, "fractions", None) or args.models == list(PROTOCOL_RUNS):
        # learning curves, the protocol: the ablations only when asked (no names: all)
        ablations = _ablation_dataset_runs() if args.ablations == [] else args.ablations or []
    else:
        ablations = (_ablation_dataset_runs() if args.ablations == [] or
                     (args.ablations is None and args.models is None) else args.ablations or [])
    models_ = args.models or [n for n, run in RUNS.items()
                              if FAMILIES[run.family].every_dataset]
    plan = [(d, m) for d in args.datasets for m in models_]
    plan += [(args.ablation_dataset, a) for a in ablations
             if (args.ablation_dataset, a) not in plan]
    return plan


def run_dirs(argv) -> list[pathlib.Path]:
    """The work directory of every run a command line asks for."""
    args = parse_args(argv)
    roots = ([curves.fraction_dir(args.workdir, f) for f in args.fractions] if args.fractions
             else [pathlib.Path(args.workdir)])
    return [root / d / name / f"seed{seed}" for root in roots for d, name in plan_of(args)
            for seed in seeds_of(args, d)]


def _base(args: argparse.Namespace) -> Config:
    base = override(get_config(), [*(curves.CURVE_SETTINGS if args.fractions else ()),
                                   *args.set])
    if base.seeds:
        raise ValueError("seeds: the sweep takes its seeds from --seeds (and trains them "
                         "together with --seeds-together)")
    if not base.score_test:
        raise ValueError("score_test: the sweep reports test metrics; use experiments.select "
                         "for validation-only runs")
    return base


def _sweep(args, base: Config, plan, out: pathlib.Path, *, d4: bool = True,
           label: str = "") -> tuple[list[dict], list[str]]:
    """Train (unless ``--no-train``) and score the runs of ``plan`` for every seed in
    ``out``: their summaries and the runs not finished (``--no-train``)."""
    runs, missing = [], []
    for dataset, name in plan:
        seeds = seeds_of(args, dataset)
        tuned = tune(args, base, dataset, name, out) if args.tune else None
        if args.tune and tuned is None:  # --no-train before the tuning finished
            missing += [f"{label}{dataset}/{name} (tuning)"]
            continue
        run_base = override(base, [f"{tuned['field']}={tuned['chosen']}"]) if tuned else base
        if not args.no_train:
            train_together(run_base, dataset, name, seeds, out, args.seeds_together)
        for seed in seeds:
            if args.no_train and not finished(out / dataset / name / f"seed{seed}"):
                missing.append(f"{label}{dataset}/{name}/seed{seed}")
                continue
            print(f"== {label}{dataset} {name} seed {seed}", flush=True)
            runs.append(run_one(run_base, dataset, name, seed, out, d4=d4))
            if tuned:
                runs[-1]["tuned"] = tuned
    return runs, missing


def tune(args: argparse.Namespace, base: Config, dataset: str, name: str,
         out: pathlib.Path) -> dict | None:
    """Choose ``--tune``'s field for one run name on validation data only: every value
    with every ``--tune-seeds`` seed, ``score_test=false`` (the test split unread), in
    ``<out>/tune/<dataset>/<name>/<field>=<value>/seed<N>`` (finished runs kept); the
    value with the highest mean validation AUC at the best epoch wins (the first on a
    tie). Returns the record (also ``<out>/<dataset>/<name>/tuned.json``), or ``None``
    with ``--no-train`` while a tuning run is unfinished."""
    field, values = args.tune
    scores = {}
    for value in values:
        aucs = []
        for seed in args.tune_seeds:
            work = out / "tune" / dataset / name / f"{field}={value}" / f"seed{seed}"
            if not (work / "results.json").is_file():
                if args.no_train:
                    return None
                config = override(run_config(base, dataset, name, seed),
                                  [f"{field}={value}", "score_test=false"])
                print(f"== tuning {dataset} {name} {field}={value} seed {seed}", flush=True)
                train.train_and_evaluate(config, work)
            aucs.append(json.loads((work / "results.json").read_text())["val"]["auc"])
        scores[value] = float(np.mean(aucs))
    chosen = max(values, key=lambda v: scores[v])
    record = {"field": field, "values": values, "seeds": list(args.tune_seeds),
              "val_auc_mean": scores, "chosen": chosen}
    path = out / dataset / name / "tuned.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def learning_curves(args: argparse.Namespace) -> dict:
    """The ``--fractions`` sweep: every run at every fraction; writes ``curves.json``,
    ``curves.md`` and ``curves.png`` (and ``--results`` / ``--figure``)."""
    base, plan = _base(args), plan_of(args)
    for f in args.fractions:  # fail on bad names or settings before any training
        for dataset, name in plan:
            validate(run_config(dataclasses.replace(base, train_fraction=f), dataset, name, 0))
    out = pathlib.Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    runs, missing = [], []
    for f in args.fractions:
        got, lost = _sweep(args, dataclasses.replace(base, train_fraction=f), plan,
                           curves.fraction_dir(out, f), d4=False, label=f"fraction {f:g} ")
        runs += got
        missing += lost
    if missing:
        print(f"not finished (--no-train): {', '.join(missing)}")
    if not runs:
        raise SystemExit(f"no finished runs in {out}")
    settings = {"fractions": args.fractions, "datasets": args.datasets, "models": args.models,
                "seeds": {d: seeds_of(args, d) for d in args.datasets}, "steps": base.epochs * base.steps_per_epoch,
                "config": {k: v for k, v in dataclasses.asdict(base).items()
                           if k not in ("train_fraction", "seed", "dataset", "model")},
                "selection": "best epoch on validation AUC; test split read once",
                "missing": missing}
    doc = curves.document(runs, settings)
    text = json.dumps(doc, indent=2) + "\n"
    table = curves.markdown(doc)
    (out / "curves.json").write_text(text)
    (out / "curves.md").write_text(table + "\n")
    curves.plot(doc, out / "curves.png")
    for path, write in ((args.results, lambda p: p.write_text(text)),
                        (args.figure, lambda p: curves.plot(doc, p))):
        if path:
            pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
            write(pathlib.Path(path))
    print(table)
    return doc


def main(argv=None):
    args = parse_args(argv)
    if args.fractions:
        return learning_curves(args)
    plan = plan_of(args)
    base = _base(args)
    for dataset, name in plan:  # fail on bad names before any training
        validate(run_config(base, dataset, name, 0))
    out = pathlib.Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    runs, missing = _sweep(args, base, plan, out)
    if missing:
        print(f"not finished (--no-train): {', '.join(missing)}")
    if not runs:
        raise SystemExit(f"no finished runs in {out}")
    rows = summarize(runs)
    (out / "results.json").write_text(json.dumps({"runs": runs, "summary": rows}, indent=2))
    if args.results_dir:
        settings = {"seeds": {d: seeds_of(args, d) for d in args.datasets},
                    "tune": None if not args.tune else {"field": args.tune[0],
                                                        "values": args.tune[1],
                                                        "seeds": args.tune_seeds},
                    "config": {
            k: v for k, v in dataclasses.asdict(base).items()
            if k not in ("seed", "dataset", "model")},
            "selection": "best epoch on validation AUC; test split read once",
            "missing": missing}
        for path in report.write_results(runs, args.results_dir, settings, order=list(RUNS)):
            print(f"wrote {path}")
    table = markdown(rows)
    (out / "results.md").write_text(table + "\n")
    write_plots(runs, rows, out)
    first = [r for r in runs if r["model"] == "p4m_dgcnn"]
    if first:
        from experiments import figures
        figures.attention_figure(first[0]["workdir"], out / "attention.png")
        figures.equivariance_figure(first[0]["workdir"], out / "equivariance.png")
    print(table)
    return rows


if __name__ == "__main__":
    from experiments.checkpoints import CheckpointError

    try:
        main()
    except (ValueError, FileNotFoundError, CheckpointError, train.TrainingError,
            train.WorkdirError) as err:  # user errors: one line, no traceback
        raise SystemExit(f"error: {err}") from None
