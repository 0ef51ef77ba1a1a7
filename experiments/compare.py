"""Sweep: train model families over seeds and datasets; tables, robustness and plots.

    python -m experiments.compare --workdir runs/compare \\
        [--datasets breastmnist pneumoniamnist] [--models cnn p4_gcnn ...] \\
        [--seeds 0 1 2 3 4] [--ablations ...] [--set epochs=30 ...]

Every run is a ``train_and_evaluate`` work directory ``<workdir>/<dataset>/<name>/seed<N>``
(the best epoch is chosen on validation AUC, the test split is read once with the best
checkpoint); a finished run is not trained again, so an interrupted sweep continues
where it stopped. Each trained model is then scored on all 8 D4-transformed copies of
the test split (robustness).

``name`` is a registered model, an ablation of the dynamic p4m G-CNN (``ABLATIONS``:
K in {1, 2, 8}, equivariant attention, no temperature annealing; K = 4 with invariant
attention and annealing is ``p4m_dgcnn`` itself), a G-CNN with the orientation-aware
readout (``ORIENTED``: ``<model>_orient``, the head sees every group element, so the
logits are not invariant; with ``cnn_lr1e-2``, the CNN at their learning rate) or a
control (``cnn_augment``: the plain CNN trained on random D4 transforms). Without
``--models`` the sweep runs the parameter- and FLOP-matched families and the control on
every dataset, and the ablations and readout variants on ``--ablation-dataset``; naming
models runs only those (add ``--ablations`` to run them too). ``--no-train`` builds the
tables and plots from the finished runs only.

Writes ``results.json`` and ``results.md`` (per dataset: parameter-matched, FLOP-matched
and ablation tables with validation AUC at the best epoch, mean +- std over seeds of test
AUC and accuracy, parameters, forward FLOPs, training time, D4 spread),
``auc_bars.png``, ``roc_<dataset>.png`` (test ROC of each model's first seed and mean
validation-AUC curves) and, from the first ``p4m_dgcnn`` run, the attention and
equivariance figures of :mod:`experiments.figures`.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from dgcnn_jax import metrics
from experiments import datasets, evaluate, train
from experiments.configs import get_config, override

PARAMETER_MATCHED = ("cnn", "p4_gcnn", "p4m_gcnn", "p4_dgcnn", "p4m_dgcnn")
FLOP_MATCHED = ("p4_dgcnn_wide", "p4m_dgcnn_wide")
# name -> (registered model, config assignments)
# the plain CNN trained on random D4 transforms of the images: what symmetry alone gives
CONTROLS = {"cnn_augment": ("cnn", ("augment=true",))}
# K=4, invariant, annealed = p4m_dgcnn
ABLATIONS = {
    "p4m_dgcnn_k1": ("p4m_dgcnn", ("num_kernels=1",)),
    "p4m_dgcnn_k2": ("p4m_dgcnn", ("num_kernels=2",)),
    "p4m_dgcnn_k8": ("p4m_dgcnn", ("num_kernels=8",)),
    "p4m_dgcnn_equivariant": ("p4m_dgcnn", ("attention=equivariant",)),
    "p4m_dgcnn_no_anneal": ("p4m_dgcnn", ("tau_initial=1.0", "tau_final=1.0")),
}
# the G-CNNs with the orientation-aware readout: equivariant layers, the head sees every
# group element (logits not invariant; for images with a canonical orientation), trained
# at the learning rate chosen on validation for p4m_dgcnn_orient, and the plain CNN
# (orientation-aware by construction) at that learning rate
ORIENTED_LEARNING_RATE = "learning_rate=0.01"
ORIENTED = {"cnn_lr1e-2": ("cnn", (ORIENTED_LEARNING_RATE,)),
            **{f"{m}_orient": (m, ("readout=orientation", ORIENTED_LEARNING_RATE))
               for m in PARAMETER_MATCHED[1:]}}
# what runs on --ablation-dataset only
ABLATION_DATASET_RUNS = {**ABLATIONS, **ORIENTED}
# the tables of results.md: title, the names shown in order, the names that make it shown
SECTIONS = (
    ("parameter-matched", ("cnn", "cnn_augment", *PARAMETER_MATCHED[1:]),
     PARAMETER_MATCHED + tuple(CONTROLS)),
    ("FLOP-matched (dynamic nets at the width of their static counterparts)",
     ("p4_gcnn", "p4_dgcnn_wide", "p4m_gcnn", "p4m_dgcnn_wide"), FLOP_MATCHED),
    ("ablations of the dynamic p4m G-CNN (K kernels, attention, temperature annealing)",
     ("p4m_dgcnn_k1", "p4m_dgcnn_k2", "p4m_dgcnn", "p4m_dgcnn_k8", "p4m_dgcnn_equivariant",
      "p4m_dgcnn_no_anneal"), tuple(ABLATIONS)),
    ("orientation-aware readout (equivariant layers; the head sees every group element, "
     "so the logits are not invariant; learning rate 1e-2)", ("cnn", *ORIENTED),
     tuple(ORIENTED)),
)


def resolve(name: str) -> tuple[str, tuple[str, ...]]:
    """``(registered model, config assignments)`` of a sweep name."""
    return {**CONTROLS, **ABLATION_DATASET_RUNS}.get(name, (name, ()))


def run_config(dataset: str, name: str, seed: int, sets: list[str]):
    model, extra = resolve(name)
    return override(get_config(), [*sets, *extra, f"dataset={dataset}", f"model={model}",
                                   f"seed={seed}"])


def run_one(dataset: str, name: str, seed: int, workdir: pathlib.Path, sets: list[str]):
    """Train (unless finished) and score one run; returns its summary."""
    work = workdir / dataset / name / f"seed{seed}"
    config = run_config(dataset, name, seed, sets)
    if (work / "results.json").is_file():
        results = json.loads((work / "results.json").read_text())
    else:
        results = train.train_and_evaluate(config, work)
    robust_path = work / "eval_test.json"
    robust = (json.loads(robust_path.read_text()) if robust_path.is_file()
              else evaluate.evaluate(work, "test", d4=True))
    history = [json.loads(line) for line in (work / "metrics.jsonl").open()]
    return {"dataset": dataset, "model": name, "seed": seed, "workdir": str(work),
            "val_auc": results["val"]["auc"],
            "test_auc": results["test"]["auc"], "test_accuracy": results["test"]["accuracy"],
            "num_params": results["num_params"], "train_seconds": results["train_seconds"],
            "best_epoch": results["best_epoch"], "d4_auc_min": robust["d4"]["auc_min"],
            "d4_auc_max": robust["d4"]["auc_max"],
            "val_auc_curve": [h["val_auc"] for h in history]}


def finished(work: pathlib.Path, *, scored: bool = False) -> bool:
    """Trained and tested, and either D4-scored or with the checkpoint to score it
    (``scored``: D4-scored)."""
    best = work / "checkpoints" / "best"
    return (work / "results.json").is_file() and (
        (work / "eval_test.json").is_file()
        or (not scored and best.is_dir() and any(s.name.isdigit() for s in best.iterdir())))


def forward_mflops(config) -> float:
    """Forward MFLOPs per image of the run's model (analytic count, its input size)."""
    from flax import nnx

    from dgcnn_jax import models

    num_classes, channels = datasets.dataset_facts(config.dataset)
    size = models.spec(config.model).input_size
    model = models.create(config.model, num_classes=num_classes, in_channels=channels,
                          rngs=nnx.Rngs(0), **train.model_kwargs(config))
    return models.forward_flops(model, (size, size, channels)) / 1e6


def summarize(runs: list[dict], sets: list[str] = ()) -> list[dict]:
    rows = []
    keys = sorted({(r["dataset"], r["model"]) for r in runs},
                  key=lambda k: (k[0], _order(k[1])))
    for dataset, model in keys:
        rs = [r for r in runs if r["dataset"] == dataset and r["model"] == model]
        auc = np.array([r["test_auc"] for r in rs])
        acc = np.array([r["test_accuracy"] for r in rs])
        val = np.array([r["val_auc"] for r in rs])
        rows.append({"dataset": dataset, "model": model, "seeds": len(rs),
                     "val_auc_mean": float(val.mean()),
                     "auc_mean": float(auc.mean()), "auc_std": float(auc.std(ddof=1))
                     if len(rs) > 1 else 0.0, "accuracy_mean": float(acc.mean()),
                     "accuracy_std": float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
                     "num_params": rs[0]["num_params"],
                     "mflops": forward_mflops(run_config(dataset, model, 0, list(sets))),
                     "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rs])),
                     "d4_auc_drop_max": float(max(r["test_auc"] - r["d4_auc_min"]
                                                  for r in rs))})
    return rows


def _order(model: str) -> int:
    names = ("cnn", *CONTROLS, *PARAMETER_MATCHED[1:], *FLOP_MATCHED, *ABLATION_DATASET_RUNS)
    return names.index(model) if model in names else len(names)


def sections(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Group summary rows into the tables of results.md, per dataset.

    A table is shown when one of its own models ran (the static references of the
    FLOP-matched and ablation tables repeat rows of the parameter-matched one).
    """
    out = []
    for dataset in sorted({r["dataset"] for r in rows}):
        by_name = {r["model"]: r for r in rows if r["dataset"] == dataset}
        for title, names, own in SECTIONS:
            if any(n in by_name for n in own):
                out.append((f"{dataset}: {title}", [by_name[n] for n in names if n in by_name]))
        known = {n for _, names, _ in SECTIONS for n in names}
        rest = [r for n, r in by_name.items() if n not in known]
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
                  "parameters | forward MFLOPs | train time (s) | largest AUC drop on a D4 "
                  "copy |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            lines.append(f"| `{r['model']}` | {r['seeds']} | {r['val_auc_mean']:.3f} | "
                         f"{_spread(r, 'auc')} | {_spread(r, 'accuracy')} | "
                         f"{r['num_params']:,} | {r['mflops']:.1f} | "
                         f"{r['train_seconds_mean']:.0f} | {r['d4_auc_drop_max']:.4f} |")
        lines.append("")
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
        for model in [r["model"] for r in rows
                      if r["dataset"] == dataset and r["model"] not in ABLATION_DATASET_RUNS]:
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
    config = json.loads((work / "config.json").read_text())
    return datasets.open_dataset(config["dataset"], config["data_dir"]).split("test")[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/compare")
    p.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist"])
    p.add_argument("--models", nargs="+", default=None,
                   help="registered models, controls or ablation names (default: the "
                        "parameter- and FLOP-matched families and cnn_augment, plus the "
                        "ablations)")
    p.add_argument("--ablations", nargs="*", default=None,
                   help=f"ablations and readout variants to run on --ablation-dataset (no "
                        f"names: all of {', '.join(ABLATION_DATASET_RUNS)}); on by default "
                        f"when --models is not given")
    p.add_argument("--ablation-dataset", default="breastmnist")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--set", action="append", default=["progress=false"], metavar="KEY=VALUE")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: tables and plots from the finished runs only "
                        "(the missing ones are listed)")
    return p.parse_args(argv)


def plan_of(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The ``(dataset, name)`` pairs a command line asks for, in order."""
    ablations = (list(ABLATION_DATASET_RUNS) if args.ablations == [] or
                 (args.ablations is None and args.models is None) else args.ablations or [])
    models = args.models or list(PARAMETER_MATCHED + tuple(CONTROLS) + FLOP_MATCHED)
    plan = [(d, m) for d in args.datasets for m in models]
    plan += [(args.ablation_dataset, a) for a in ablations
             if (args.ablation_dataset, a) not in plan]
    return plan


def run_dirs(argv) -> list[pathlib.Path]:
    """The work directory of every run a command line asks for."""
    args = parse_args(argv)
    return [pathlib.Path(args.workdir, d, name, f"seed{seed}") for d, name in plan_of(args)
            for seed in args.seeds]


def main(argv=None):
    args = parse_args(argv)
    plan = plan_of(args)
    for dataset, name in plan:  # fail on bad names before any training
        train.validate(run_config(dataset, name, 0, args.set))
    out = pathlib.Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    runs, missing = [], []
    for dataset, name in plan:
        for seed in args.seeds:
            if args.no_train and not finished(out / dataset / name / f"seed{seed}"):
                missing.append(f"{dataset}/{name}/seed{seed}")
                continue
            print(f"== {dataset} {name} seed {seed}", flush=True)
            runs.append(run_one(dataset, name, seed, out, args.set))
    if missing:
        print(f"not finished (--no-train): {', '.join(missing)}")
    if not runs:
        raise SystemExit(f"no finished runs in {out}")
    rows = summarize(runs, args.set)
    (out / "results.json").write_text(json.dumps({"runs": runs, "summary": rows}, indent=2))
    table = markdown(rows)
    (out / "results.md").write_text(table + "\n")
    plots(runs, rows, out)
    first = [r for r in runs if r["model"] == "p4m_dgcnn"]
    if first:
        from experiments import figures
        figures.attention_figure(first[0]["workdir"], out / "attention.png")
        figures.equivariance_figure(first[0]["workdir"], out / "equivariance.png")
    print(table)
    return rows


if __name__ == "__main__":
    main()
