"""Validation curves of pilot runs, which choose the step budget of a protocol.

    python -m experiments.pilot RUN... --out results/idc_pilot.json [--figure FILE] \
        [--metric val_accuracy]

Each ``RUN`` is a training folder, finished or not, named in the table by its sweep run
(``<name>/seed<N>``) or else by its model (a pilot reads validation only:
``--set score_test=false``). The document holds, per run, the model, dataset, view,
seed, steps per epoch, the epochs planned and done, and per epoch the validation AUC,
accuracy and NLL; :func:`markdown` renders the table that ``experiments.report``
writes into the docs (block kind ``pilot``), with the best epoch and the first epoch
within ``TOLERANCE`` of the best ("flat from") of the document's metric: validation AUC
by default; ``--metric val_accuracy`` (or ``val_nll``, lower is better) where the AUC
saturates early, as PBC's 8-class macro AUC does (0.997 after two epochs).

``--records FILE...`` adds reference curves from committed run records
(``results/runs/<dataset>/<run>/seed<N>.json``, :mod:`experiments.sweep.records`): runs of
a protocol, which read their test split; only their per-epoch validation scores are
taken, and the table names them ``(record)``, so that a selection's curves can be set
beside its references without a pilot choosing on a tested run.
"""

from __future__ import annotations

import json
import pathlib
import re

from experiments import cli

__all__ = ["TOLERANCE", "METRICS", "collect", "flat_from", "markdown", "plot", "main"]

TOLERANCE = 0.005  # a validation score within this of the run's best counts as flat
METRICS = {"val_auc": "validation AUC", "val_accuracy": "validation accuracy",
           "val_nll": "validation NLL"}
"""The per-epoch scores a pilot keeps; the document's ``metric`` is one of them."""


def _entry(config: dict, history: list[dict], run: str) -> dict:
    return {"run": run, "model": config["model"], "dataset": config["dataset"],
            "input_size": config.get("input_size", 0), "seed": config["seed"],
            "epochs_planned": config["epochs"], "epochs_done": len(history),
            "steps_per_epoch": history[0]["step"] if history else None,
            **{key: [h[key] for h in history] for key in METRICS}}


def collect(workdirs: list[str], metric: str = "val_auc", records: list[str] = ()) -> dict:
    """The document of the (pilot) runs in ``workdirs`` and the reference curves of the
    run records ``records`` (each with ``"record": true``); ``metric`` (of
    :data:`METRICS`) is the score its table and figure show."""
    from experiments import report, training
    from experiments.sweep import records as sweep_records

    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")

    runs = []
    for name in workdirs:
        folder = training.Workdir(name)
        if not folder.config_file.is_file():
            raise FileNotFoundError(f"runs: {folder.config_file} not found")
        config = folder.config()
        if config.get("score_test", True):
            raise ValueError(f"runs: {folder.path} reads the test split (score_test is not "
                             f"false): a pilot chooses on validation only")
        history = [h for h in folder.history() if not h.get("partial")]
        sweep_run = re.fullmatch(r"seed\d+", folder.path.name)  # <name>/seed<N> of a sweep
        runs.append(_entry(config, history,
                           folder.path.parent.name if sweep_run else config["model"]))
    for name in records:
        record = sweep_records.read(pathlib.Path(name))  # validated: fields and checksum
        history = [h for h in record["history"] if not h.get("partial")]
        runs.append({**_entry(record["config"], history, record["run"]),
                     "record": True})
    return {"runs": runs, "metric": metric, "tolerance": TOLERANCE,
            "machine": report.machine()}


def flat_from(values: list[float], tolerance: float = TOLERANCE,
              lower_is_better: bool = False) -> int | None:
    """The first epoch (1-based) whose score is within ``tolerance`` of the best."""
    if not values:
        return None
    sign = -1.0 if lower_is_better else 1.0
    best = max(sign * v for v in values)
    return next(i + 1 for i, v in enumerate(values) if sign * v >= best - tolerance)


def _metric(doc: dict) -> str:
    """The document's metric (validation AUC for documents written before it was kept)."""
    return doc.get("metric", "val_auc")


def _name(run: dict) -> str:
    """A run's name in tables: its sweep run, or its model (documents written before)."""
    return run.get("run", run["model"])


def markdown(doc: dict) -> str:
    metric = _metric(doc)
    lower = metric == "val_nll"
    width = max((len(r[metric]) for r in doc["runs"]), default=0)
    shown = [e for e in range(1, width + 1) if e == 1 or e % 2 == 0 or e == width]
    lines = ([f"{METRICS[metric]} per epoch"] if metric != "val_auc" else []) + [
        "| run | epochs | " + " | ".join(f"{e}" for e in shown) + " | best (epoch) | flat from |",
        "|---|---|" + "---|" * len(shown) + "---|---|"]
    for r in doc["runs"]:
        values = r[metric]
        cells = [f"{values[e - 1]:.4f}" if e <= len(values) else "" for e in shown]
        top = (min if lower else max)(values) if values else None
        best = f"{top:.4f} ({values.index(top) + 1})" if values else ""
        flat = flat_from(values, doc["tolerance"], lower) or ""
        source = " (record)" if r.get("record") else ""
        lines.append(f"| `{_name(r)}` seed {r['seed']}{source} | {r['epochs_done']} of "
                     f"{r['epochs_planned']} | " + " | ".join(cells) + f" | {best} | {flat} |")
    return "\n".join(lines)


def plot(doc: dict, path) -> None:
    from experiments import plots

    labels = {f"{_name(r)} seed {r['seed']}": r for r in doc["runs"]}
    names = {label: _name(r) for label, r in labels.items()}
    several = len(set(names.values())) < len(names)  # several seeds of a run: a panel each
    metric = _metric(doc)
    plots.validation_curves({label: r[metric] for label, r in labels.items()}, path,
                            ylabel=METRICS[metric], panels=names if several else None)


def main(argv=None):
    p = cli.Parser(__doc__)
    p.add_argument("runs", nargs="*", help="training folders of the pilot")
    p.add_argument("--records", nargs="+", default=[],
                   help="run records whose validation curves to add as references")
    p.add_argument("--out", required=True, help="the JSON document to write")
    p.add_argument("--figure", default=None, help="also plot the curves here")
    p.add_argument("--metric", default="val_auc", choices=list(METRICS),
                   help="the score the table and figure show (default: validation AUC)")
    args = p.parse_args(argv)
    if not args.runs and not args.records:
        p.error("runs: give training folders, --records, or both")
    doc = collect(args.runs, args.metric, args.records)
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    if args.figure:
        plot(doc, args.figure)
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    cli.run(main, "experiments.pilot")
