"""Epoch times for planning: what finished one-epoch runs measured, as a small document.

    python -m experiments.epoch_times RUN... --out results/idc_epoch_times.json \
        [--how "one run at a time, pinned to one core"]

Each ``RUN`` is a finished training folder (e.g. ``--set epochs=1``). The document holds,
per run, the model, dataset, view (``input_size``), parameters, steps, the training
time of its epochs (``train_seconds``, without start-up, validation or test), images per
second in training and in inference, and the machine; :func:`markdown` renders the
table that ``experiments.report`` writes into the README (block kind ``epoch-times``).
"""

from __future__ import annotations

import json
import pathlib

from experiments import cli

__all__ = ["collect", "markdown", "main"]


def _train_images_per_second(results: dict, config: dict) -> float:
    """The run's training throughput; computed, as training does, for validation-only
    runs written before their results kept it."""
    if "train_images_per_second" in results:
        return results["train_images_per_second"]
    return (results["steps"] * config["batch_size"] * results.get("seeds_trained_together", 1)
            / max(results["train_seconds"], 1e-9))


def collect(workdirs: list[str], how: str = "") -> dict:
    """The document of the finished runs in ``workdirs``; ``how`` says how they were run
    (e.g. one at a time, pinned to one core)."""
    from experiments import report, training

    runs = []
    for name in workdirs:
        folder = training.Workdir(name)
        if not folder.has_results() or not folder.finished():
            raise ValueError(f"runs: {folder.path} is not a finished training run")
        results, config = folder.results(), folder.config()
        runs.append({
            "model": results["model"], "dataset": results["dataset"],
            "input_size": results.get("input_size"), "epochs": results["epochs_run"],
            "steps": results["steps"], "batch_size": config["batch_size"],
            "num_params": results["num_params"], "train_seconds": results["train_seconds"],
            "epoch_seconds": results["train_seconds"] / max(results["epochs_run"], 1),
            "train_images_per_second": _train_images_per_second(results, config),
            # timed on the test split: absent where it was left unread (score_test=false)
            "eval_images_per_second": results.get("eval_images_per_second"),
            "pipeline": results["pipeline"]})
    return {"runs": runs, "machine": report.machine(), "how": how}


def markdown(doc: dict) -> str:
    lines = ["| model | view | parameters | one epoch (s) | steps of 32 | training images/s | "
             "inference images/s |", "|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        lines.append(f"| `{r['model']}` | {r['input_size']} px | {r['num_params']:,} | "
                     f"{r['epoch_seconds']:.0f} | {r['steps'] // r['epochs']} | "
                     f"{r['train_images_per_second']:.0f} | "
                     + ("-" if r["eval_images_per_second"] is None
                        else f"{r['eval_images_per_second']:.0f}") + " |")
    machine = doc["machine"]
    lines.append("")
    how = f", {doc['how']}" if doc.get("how") else ""
    lines.append(f"Measured on {machine.get('cpu') or machine.get('processor') or 'a CPU'} "
                 f"({machine.get('cpus', '?')} cores, JAX {machine.get('jax', '?')}){how}.")
    return "\n".join(lines)


def main(argv=None):
    p = cli.Parser(__doc__)
    p.add_argument("runs", nargs="+", help="finished training folders")
    p.add_argument("--out", required=True, help="the JSON document to write")
    p.add_argument("--how", default="", help="how the runs were run, for the table's note")
    args = p.parse_args(argv)
    doc = collect(args.runs, args.how)
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    cli.run(main, "experiments.epoch_times")
