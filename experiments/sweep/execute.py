"""How a sweep trains its tasks: one by one in this process, the seeds of a run together
(one stacked program), or a pool of ``python -m experiments.train`` processes, each
pinned to a core of its own."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable

import jax

from experiments.configs import Config, pipeline
from experiments.training import Workdir, config_differences, train_and_evaluate

from .plan import Task, config_sets

__all__ = ["MODES", "HUGEPAGE_TUNABLE", "check_finished_config", "child_env", "train",
           "train_together", "train_pool", "default_mode", "log_tail"]

MODES = ("process", "together", "pool")
"""``process``: one run after another here; ``together``: the unfinished seeds of a run
as one program (the device pipeline; where it does not apply, one by one); ``pool``:
``workers`` training processes at a time, pinned to cores."""


HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
"""glibc's malloc asks the kernel for transparent huge pages. XLA's CPU runtime allocates
its large buffers afresh every step; with 4 KiB pages it faults each page in again.
``experiments.hugepages`` measures the step time and faults without and with it
(docs/performance.md has the table)."""


def child_env(environ: dict[str, str] | None = None, *, setting: str = HUGEPAGE_TUNABLE,
              replace: bool = False) -> dict[str, str]:
    """The environment of a training process: ``environ`` (default ``os.environ``) with
    ``setting`` (a ``glibc.malloc.hugetlb`` entry) added to ``GLIBC_TUNABLES``, unless
    the caller set that tunable already and ``replace`` is false (``experiments.hugepages``
    replaces it to time both values). Other tunables stay. Ignored where the C library is
    not glibc; values are unchanged (where memory comes from, not what is computed)."""
    env = dict(os.environ if environ is None else environ)
    entries = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    own = [t for t in entries if t.split("=")[0] == "glibc.malloc.hugetlb"]
    if not own or replace:
        env["GLIBC_TUNABLES"] = ":".join([t for t in entries if t not in own] + [setting])
    return env


def check_finished_config(work: Workdir, config: Config) -> None:
    """Refuse a finished run trained with settings that change what it computes: it is
    not these settings' result."""
    if work.finished():
        changed = config_differences(work.config(), config)
        if changed:
            raise ValueError(f"{work.path} was trained with another config "
                             f"({'; '.join(changed)}): use another --workdir for these "
                             f"settings, or delete the run")


Done = Callable[[Task, Config, Workdir], None]
"""Called with each job as soon as its run has finished, before the next one trains."""


def train(jobs: list[tuple[Task, Config, Workdir]], mode: str = "process", *,
          workers: int = 1, done: Done | None = None) -> None:
    """Train the unfinished ``(task, config, work directory)`` jobs; ``done(*job)`` for
    each one as soon as it has finished (a sweep records it there, so that a stop later
    in the sweep loses none of the runs finished before)."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    todo = [job for job in jobs if not job[2].finished()]
    for _, config, work in jobs:
        check_finished_config(work, config)
    for _, _, work in todo:  # scores of a stopped run are not those of the finished one
        (work.path / "eval_test.json").unlink(missing_ok=True)
    if mode == "pool":
        train_pool(todo, workers, done=done)
        return
    if mode == "together":
        train_together(todo, done=done)
    for task, config, work in todo:
        if not work.finished():
            print(f"== {_label(task)}", flush=True)
            train_and_evaluate(config, work.path)
            _finished(done, (task, config, work))


def _finished(done: Done | None, job: tuple[Task, Config, Workdir]) -> None:
    if done is not None and job[2].finished():
        done(*job)


def _label(task: Task) -> str:
    parts = [f"fraction {task.fraction:g}"] if task.fraction is not None else []
    parts += (["tuning"] if task.tune else []) + [task.dataset, task.name]
    parts += ["=".join(task.tune)] if task.tune else []
    return " ".join(parts + [f"seed {task.seed}"])


def train_together(jobs: list[tuple[Task, Config, Workdir]], *,
                   done: Done | None = None) -> None:
    """The unfinished seeds of each run as one stacked program, into the run's folder
    (``<...>/<name>/seed<N>``); first a stored, unfinished seed set there. ``done``: as
    for :func:`train`, after each run's seeds."""
    groups: dict[tuple, list] = {}
    for job in jobs:
        groups.setdefault(job[0].group(), []).append(job)
    for group in groups.values():
        task, config, work = group[0]
        if pipeline(config) != "device":
            continue
        top = Workdir(work.path.parent)
        stored = top.stored_seeds()
        if stored and not all(top.seed(s).finished() for s in stored):
            _together(config, top, stored, "resuming together")
        todo = [t.seed for t, _, w in group if not w.finished()]
        if len(todo) > 1:
            _together(config, top, todo, "together")
        for job in group:
            _finished(done, job)


def _together(config: Config, top: Workdir, seeds: list[int], how: str) -> None:
    listed = ",".join(map(str, seeds))
    print(f"== {top.path.parent.name} {top.path.name} seeds {listed} ({how})", flush=True)
    train_and_evaluate(dataclasses.replace(config, seeds=listed), top.path)


def default_mode() -> str:
    """Seeds together on an accelerator; one by one on the CPU, where it was measured
    slower."""
    return "process" if jax.default_backend() == "cpu" else "together"


def train_pool(jobs: list[tuple[Task, Config, Workdir]], workers: int, *,
               done: Done | None = None) -> dict[str, int]:
    """``workers`` training processes at a time, each pinned to one core when there are
    enough; each writes ``train.log`` in its work directory. ``done``: as for
    :func:`train`, in this process while the others train. Returns each run's exit code
    by label."""
    if workers < 1:
        raise ValueError(f"workers: expected a number of processes >= 1, got {workers}")
    queue, running, codes = list(jobs), [], {}
    cores = sorted(os.sched_getaffinity(0))
    start = time.perf_counter()
    while queue or running:
        while queue and len(running) < workers:
            task, config, work = queue.pop(0)
            slot = sorted(set(range(workers)) - {s for _, _, s in running})[0]
            cmd = [sys.executable, "-m", "experiments.train", "--workdir", str(work.path)]
            for item in config_sets(config):
                cmd += ["--set", item]
            if workers > 1 and len(cores) >= workers:  # one core per run
                cmd = ["taskset", "-c", str(cores[slot]), *cmd]
            work.path.mkdir(parents=True, exist_ok=True)
            with open(work.path / "train.log", "w") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                        env=child_env())
            running.append((proc, (task, config, work), slot))
            print(f"[{time.perf_counter() - start:6.0f} s] start {_label(task)}", flush=True)
        time.sleep(0.5)
        for entry in list(running):
            proc, job, _ = entry
            if proc.poll() is not None:
                running.remove(entry)
                label = _label(job[0])
                codes[label] = proc.returncode
                print(f"[{time.perf_counter() - start:6.0f} s] done {label} (rc "
                      f"{proc.returncode})", flush=True)
                if proc.returncode == 0:
                    _finished(done, job)
    return codes


def log_tail(work: Workdir, lines: int = 1) -> str:
    """The last lines of a pool run's ``train.log`` (why it failed)."""
    path = pathlib.Path(work.path) / "train.log"
    if not path.is_file():
        return ""
    return " ".join(path.read_text().strip().splitlines()[-lines:])
