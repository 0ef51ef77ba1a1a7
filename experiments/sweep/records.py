"""Run records: one small JSON file per finished, tested run, kept in the repository.

A sweep given a records folder (``compare --records results/runs``) writes
``<records>/<dataset>/<run>/seed<N>.json`` when a run has finished, been tested and
D4-scored, and treats a run with a record as done: the protocol continues on any machine
from what is committed, without the run's work directory. A record holds

- ``config``: the run's config (as its work directory stored it);
- ``history``: the validation metrics of every evaluation (``metrics.jsonl``);
- ``summary``: what the sweep's tables read (:func:`experiments.sweep.collect.summary`);
- ``test``: the test metrics at the epoch chosen on validation, ``test_labels`` and
  ``test_probs`` (probabilities as integers in units of 1/:data:`PROBABILITY_SCALE`:
  enough for paired bootstraps and ROC curves, small where a probability is near 0), ``d4`` (the D4-robustness scores) where present;
- ``machine`` and ``version``, and ``sha256``: the digest of everything else.

:func:`read` refuses, naming the path, a record that is not valid JSON, lacks a field,
does not match its digest (damaged or edited by hand), or whose probabilities do not give
its test accuracy.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np

from experiments.configs import Config
from experiments.training import Workdir, config_differences

from .collect import d4_scores
from .plan import Task

__all__ = ["VERSION", "PROBABILITY_SCALE", "RecordError", "path", "make", "write", "read",
           "run_summary", "probabilities", "test_predictions", "collect", "check_config"]

VERSION = 1
PROBABILITY_SCALE = 1_000_000
_FIELDS = {"version": int, "dataset": str, "run": str, "seed": int, "config": dict,
           "history": list, "summary": dict, "test": dict, "test_labels": list,
           "test_probs": list, "machine": dict, "sha256": str}


class RecordError(ValueError):
    """A run record that cannot be used (the message names its path)."""


def path(root: pathlib.Path, dataset: str, name: str, seed: int) -> pathlib.Path:
    """``<root>/<dataset>/<name>/seed<seed>.json``."""
    return pathlib.Path(root) / dataset / name / f"seed{seed}.json"


def _digest(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _rounded(value, digits: int = 6):
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return value


def make(task: Task, work: Workdir, brief: dict, machine: dict) -> dict:
    """The record of the finished, tested run in ``work`` whose sweep summary
    (:func:`experiments.sweep.collect.summary`, with its tuning if any) is ``brief``."""
    results = work.results()
    if not work.finished() or not results.get("test"):
        raise RecordError(f"{work.path}: not a finished, tested run; no record")
    probs = np.load(work.path / "test_probs.npy")
    labels = np.asarray(np.load(work.path / "test_labels.npy")).reshape(-1)
    record = {"version": VERSION, "dataset": task.dataset, "run": task.name,
              "seed": task.seed, "config": work.config(), "history": work.history(),
              "summary": {k: v for k, v in brief.items() if k != "workdir"},
              "test": results["test"], "test_labels": labels.astype(int).tolist(),
              "test_probs": np.rint(probs * PROBABILITY_SCALE).astype(int).tolist(),
              "machine": machine}
    robust = d4_scores(work)
    if robust:
        record["d4"] = robust
    record = _rounded(record)
    record["sha256"] = _digest(record)
    return record


def write(record: dict, root: pathlib.Path) -> pathlib.Path:
    """Write ``record`` under ``root`` atomically; returns its path."""
    out = path(root, record["dataset"], record["run"], record["seed"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n")
    tmp.replace(out)
    return out


def read(file: pathlib.Path) -> dict:
    """A validated record; :class:`RecordError` naming ``file`` otherwise."""
    file = pathlib.Path(file)
    try:
        record = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RecordError(f"{file}: not a readable run record ({err})") from None
    if not isinstance(record, dict):
        raise RecordError(f"{file}: not a run record (expected a JSON object)")
    for field, kind in _FIELDS.items():
        if not isinstance(record.get(field), kind):
            raise RecordError(f"{file}: not a run record (field {field!r} missing or not "
                              f"a {kind.__name__})")
    if record["version"] != VERSION:
        raise RecordError(f"{file}: record version {record['version']}, this code reads "
                          f"{VERSION}")
    if record["sha256"] != _digest(record):
        raise RecordError(f"{file}: contents do not match the record's sha256 (damaged or "
                          f"edited by hand); restore it from the repository or delete it "
                          f"to train the run again")
    expected = path(file.parent.parent.parent, record["dataset"], record["run"],
                    record["seed"])
    if expected.parts[-3:] != file.parts[-3:]:
        raise RecordError(f"{file}: holds {record['dataset']}/{record['run']}/seed"
                          f"{record['seed']}, expected at {'/'.join(expected.parts[-3:])}")
    probs, labels = probabilities(record)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise RecordError(f"{file}: test_probs {probs.shape} do not match "
                          f"{len(labels)} test labels")
    # rows whose rounded probabilities tie at the top may have gone either way
    rows = np.arange(len(labels))
    top, mine = probs.max(-1), probs[rows, np.clip(labels, 0, probs.shape[-1] - 1)]
    tied = (probs == top[:, None]).sum(-1) > 1
    low, high = np.mean((mine == top) & ~tied), np.mean(mine == top)
    if not low - 1e-6 <= record["test"]["accuracy"] <= high + 1e-6:  # rounded to 6 digits
        raise RecordError(f"{file}: test_probs give accuracy {low:.4f} (up to {high:.4f} "
                          f"with ties), the record says {record['test']['accuracy']:.4f}")
    return record


def probabilities(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """The test probabilities ``(N, classes)`` and labels ``(N,)`` of a record."""
    probs = np.asarray(record["test_probs"], dtype=np.float64) / PROBABILITY_SCALE
    return probs, np.asarray(record["test_labels"], dtype=np.int64)


def test_predictions(run: dict) -> tuple[np.ndarray, np.ndarray]:
    """The test probabilities and labels of a sweep summary: from its record, else from
    its work directory (``test_probs.npy``, ``test_labels.npy``)."""
    if run.get("record"):
        return probabilities(read(run["record"]))
    work = pathlib.Path(run["workdir"])
    labels = np.asarray(np.load(work / "test_labels.npy")).reshape(-1)
    return np.load(work / "test_probs.npy"), labels


def run_summary(record: dict, file: pathlib.Path, *, validation_only: bool = False) -> dict:
    """The sweep summary of a record's run (``"record"``: its path, for the bootstrap);
    ``validation_only``: without the test and D4 scores (for a selection on validation)."""
    brief = {**record["summary"], "record": str(file)}
    if validation_only:
        brief = {k: v for k, v in brief.items() if not k.startswith(("test_", "d4_"))}
    return brief


def check_config(record: dict, config: Config, file: pathlib.Path) -> None:
    """``ValueError`` if the record's run was trained with another config than ``config``."""
    changed = config_differences(record["config"], config)
    if changed:
        raise RecordError(f"{file}: recorded with another config ({'; '.join(changed)}); "
                          f"use another --records folder for these settings")


def collect(root: pathlib.Path, datasets: list[str] | None = None) -> list[dict]:
    """The summaries of every record under ``root`` (of ``datasets``, if given), validated,
    in dataset, run and seed order."""
    files = sorted(pathlib.Path(root).glob("*/*/seed*.json"))
    runs = []
    for file in files:
        if datasets and file.parent.parent.name not in datasets:
            continue
        runs.append(run_summary(read(file), file))
    return sorted(runs, key=lambda r: (r["dataset"], r["model"], r["seed"]))
