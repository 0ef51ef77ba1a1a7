"""Run a sweep: tune on validation (optional), train what is unfinished, score, collect.

:func:`run` takes the ``(dataset, name)`` pairs of a sweep, the seeds per dataset and an
optional tuning grid, trains through :mod:`experiments.sweep.execute` (in this process,
seeds together, or a pool of processes), D4-scores test runs, and returns the summaries
of the finished runs (:func:`experiments.sweep.collect.summary`) and what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from experiments import evaluate, report
from experiments.configs import Config
from experiments.training import Workdir

from . import execute, records
from .collect import summary
from .plan import Task

__all__ = ["Sweep", "finished", "run", "tune"]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What a sweep asks for besides its runs: where, how, and what to choose first."""

    root: pathlib.Path
    seeds: dict  # dataset -> seeds
    tune: tuple[str, list[str]] | None = None  # (field, values) chosen on validation
    tune_seeds: tuple[int, ...] = (100, 101)
    no_train: bool = False  # collect finished runs only
    mode: str = "process"  # execute.MODES
    workers: int = 1
    d4: bool = True  # score each test run on the 8 D4 copies of the test split
    validation_only: bool = False
    records: pathlib.Path | None = None  # run records: written when a run is done, and
    # a run with one is done (experiments.sweep.records)


def _scored(work: Workdir) -> bool:
    """Whether the run's D4 scores (``eval_test.json``) are there."""
    return (work.path / "eval_test.json").is_file()


def _record_file(sweep: Sweep, task: Task) -> pathlib.Path | None:
    """Where the record of the task's run is, or would be, in a sweep that keeps records;
    ``None`` for tuning and learning-curve runs."""
    if sweep.records is None or task.tune or task.fraction is not None:
        return None
    return records.path(sweep.records, task.dataset, task.name, task.seed)


def _record(sweep: Sweep, task: Task) -> pathlib.Path | None:
    """The record file a test run of the sweep writes (whether or not it exists yet);
    ``None`` for validation-only runs too: they read records, never write them."""
    return None if task.validation_only else _record_file(sweep, task)


def _existing_record(sweep: Sweep, task: Task) -> dict | None:
    """The task's record (validated) if the sweep keeps records and it has one. A
    validation-only task takes the record of the same run trained with the test split
    scored (``score_test`` does not change training) and reads its validation only."""
    file = _record_file(sweep, task)
    return records.read(file) if file is not None and file.is_file() else None


def finished(work: Workdir | pathlib.Path, *, scored: bool = False) -> bool:
    """Trained and tested, and either D4-scored or with the best checkpoint to score it
    (``scored``: D4-scored)."""
    work = Workdir(work) if not isinstance(work, Workdir) else work
    return work.finished() and (_scored(work) or (not scored and work.has_checkpoint("best")))


def tune(sweep: Sweep, base: Config, dataset: str, name: str,
         fraction: float | None = None) -> dict | None:
    """Choose ``sweep.tune``'s field for one run on validation data only: every value with
    every tuning seed, ``score_test=false`` (the test split unread); the value with the
    highest mean validation AUC at the best epoch wins (the first on a tie). Returns the
    record (also ``<dataset>/<name>/tuned.json``), or ``None`` with ``no_train`` while a
    tuning run is unfinished."""
    field, values = sweep.tune
    jobs = [(task, task.config(base), task.workdir(sweep.root))
            for value in values for task in [Task(dataset, name, s, fraction, (field, value))
                                             for s in sweep.tune_seeds]]
    if sweep.no_train and not all(w.finished() for _, _, w in jobs):
        return None
    execute.train(jobs, "pool" if sweep.mode == "pool" else "process", workers=sweep.workers)
    scores = {value: float(np.mean([w.results()["val"]["auc"] for t, _, w in jobs
                                    if t.tune[1] == value])) for value in values}
    chosen = max(values, key=lambda v: scores[v])
    record = {"field": field, "values": list(values), "seeds": list(sweep.tune_seeds),
              "val_auc_mean": scores, "chosen": chosen}
    path = Task(dataset, name, 0, fraction).workdir(sweep.root).path.parent / "tuned.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def run(sweep: Sweep, base: Config, pairs: list[tuple[str, str]], *,
        fraction: float | None = None, label: str = "") -> tuple[list[dict], list[str]]:
    """Train (unless ``no_train``) and summarise every seed of every pair: the summaries
    of the runs with results (a run stopped by ``max_steps`` has them, marked
    ``"finished": false``, and is trained on the next time) and the names of those
    missing."""
    runs, missing, planned = [], [], []
    d4 = sweep.d4 and not sweep.validation_only  # D4-score the tested runs
    for dataset, name in pairs:
        tasks = [Task(dataset, name, s, fraction, validation_only=sweep.validation_only)
                 for s in sweep.seeds[dataset]]
        done = [_existing_record(sweep, t) for t in tasks]
        if tasks and all(done):  # recorded: its tuning too
            tuned = done[0]["summary"].get("tuned")
        else:
            tuned = tune(sweep, base, dataset, name, fraction) if sweep.tune else None
        if sweep.tune and tuned is None:  # no_train before the tuning finished
            missing.append(f"{label}{dataset}/{name} (tuning)")
            continue
        chosen = (tuned["field"], tuned["chosen"]) if tuned else None
        jobs = [(t, t.config(base, chosen), t.workdir(sweep.root)) for t in tasks]
        for (task, config, _), record in zip(jobs, done):
            if record:  # done: the same config, or refused
                file = _record_file(sweep, task)
                records.check_config(record, config, file)
                runs.append(records.run_summary(record, file,
                                                validation_only=task.validation_only))
        planned.append((tuned, [job for job, record in zip(jobs, done) if not record]))
    tuned_of = {job[0]: tuned for tuned, jobs in planned for job in jobs}
    kept: dict[Task, dict] = {}  # summaries of the runs recorded as they finished

    def keep(task: Task, config: Config, work: Workdir) -> None:  # record it at once
        if _record(sweep, task) is not None:
            kept[task] = _collect(sweep, task, config, work, tuned_of[task], d4)

    if not sweep.no_train:  # one pool for every run, seed by seed: pairs fill up early
        jobs = sorted((job for _, jobs in planned for job in jobs), key=lambda j: j[0].seed)
        execute.train(jobs, sweep.mode, workers=sweep.workers, done=keep)
    for tuned, jobs in planned:
        for task, config, work in jobs:
            if not work.has_results() or (d4 and not (_scored(work)
                                                      or work.has_checkpoint("best"))):
                why = execute.log_tail(work) if sweep.mode == "pool" else ""
                missing.append(f"{label}{task.dataset}/{task.name}/seed{task.seed}"
                               + (f" ({why})" if why else ""))
                continue
            runs.append(kept.get(task) or _collect(sweep, task, config, work, tuned, d4))
    return runs, missing


def _collect(sweep: Sweep, task: Task, config: Config, work: Workdir, tuned: dict | None,
             d4: bool) -> dict:
    """A run with results: its D4 scores (``d4``, once), its summary and, for a finished
    run of a sweep that keeps records, its record (written once)."""
    execute.check_finished_config(work, config)
    if d4 and not _scored(work):
        evaluate.evaluate(work.path, "test", d4=True)
    brief = {**summary(task, config, work), **({"tuned": tuned} if tuned else {})}
    file = _record(sweep, task)
    if file is not None and work.finished() and not file.is_file():
        records.write(records.make(task, work, brief, report.machine()), sweep.records)
        print(f"recorded {file}", flush=True)
    return brief
