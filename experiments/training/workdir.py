"""The work directory of a run as one object: its lock, its config, its files.

A run's folder holds ``config.json``, ``metrics.jsonl`` (one line per epoch),
``results.json`` (once tested, or validated only), checkpoints (``checkpoints/latest``,
``checkpoints/best``), plots and ``test_probs.npy`` / ``test_labels.npy``; several seeds
trained together put a run like that into ``seed<N>`` each and keep their stacked state
in the top folder's ``checkpoints/latest``. :class:`Workdir` names those files, reads
them, and answers "is this run finished"; every command asks it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil

from dgcnn_jax import models
from experiments.configs import DYNAMIC_FIELDS, Config, from_stored

from .parallel import primary

__all__ = ["WorkdirError", "RESUMABLE_CHANGES", "config_differences", "Workdir",
           "seed_list", "write_json", "say"]


class WorkdirError(RuntimeError):
    """The work directory cannot be used for this run (another config, another process)."""


# Config fields that do not change what a run computes: a resumed run may differ in them.
RESUMABLE_CHANGES = ("data_dir", "progress", "plots", "eval_batch_size",
                     "checkpoint_every_steps", "num_devices", "max_steps", "score_test")


def config_differences(stored: dict, config: Config) -> list[str]:
    """``"field stored -> new"`` for every field that changes the run (fields the stored
    config lacks take the values of the time it was written, ``configs.LEGACY_VALUES``)."""
    stored = from_stored(stored)
    new = dataclasses.asdict(config)
    return [f"{k} {stored.get(k, '(absent)')!r} -> {new[k]!r}" for k in new
            if k not in RESUMABLE_CHANGES and k not in _unused_fields(config)
            and stored.get(k, new[k]) != new[k]]


def _unused_fields(config: Config) -> set[str]:
    """Fields that do not reach ``config.model`` (a static model has no attention)."""
    spec = models.spec(config.model)
    if not spec.dynamic:
        return {*DYNAMIC_FIELDS, "tau_initial", "tau_final", "tau_anneal_epochs",
                "tau_anneal_fraction", "bank_weight_decay"}
    return set(DYNAMIC_FIELDS[2:]) if spec.input_size != 28 else set()


def seed_list(config: Config) -> list[int]:
    """The seeds of ``config.seeds`` (``"0,1,2"``), or ``[config.seed]`` when it is empty."""
    if not config.seeds:
        return [config.seed]
    return [int(x) for x in config.seeds.split(",")]


def _read_json(path: pathlib.Path) -> dict:
    """A JSON object from ``path``; ``ValueError`` naming the file if it is not one."""
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); restore it or delete the run") \
            from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def write_json(path: pathlib.Path, obj) -> None:
    """Write ``obj`` atomically (a temporary file, then a rename); process 0 only."""
    if not primary():
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


def say(*args) -> None:
    """Print (process 0 only), flushed."""
    if primary():
        print(*args, flush=True)


@dataclasses.dataclass(frozen=True)
class Workdir:
    """The files of one run's folder (``path``), and what they say."""

    path: pathlib.Path

    def __post_init__(self):
        object.__setattr__(self, "path", pathlib.Path(self.path))

    # ---- files
    @property
    def config_file(self) -> pathlib.Path:
        return self.path / "config.json"

    @property
    def results_file(self) -> pathlib.Path:
        return self.path / "results.json"

    @property
    def history_file(self) -> pathlib.Path:
        return self.path / "metrics.jsonl"

    def checkpoint_dir(self, kind: str) -> pathlib.Path:
        """``checkpoints/latest`` or ``checkpoints/best``."""
        return self.path / "checkpoints" / kind

    def seed(self, seed: int) -> Workdir:
        """The folder of one seed of several trained together."""
        return Workdir(self.path / f"seed{seed}")

    # ---- reading
    def config(self) -> dict:
        return _read_json(self.config_file)

    def results(self) -> dict:
        return _read_json(self.results_file)

    def history(self) -> list[dict]:
        """The per-epoch records of ``metrics.jsonl`` (empty before the first epoch)."""
        if not self.history_file.is_file():
            return []
        return [json.loads(line) for line in self.history_file.open()]

    def has_results(self) -> bool:
        """Whether ``results.json`` was written (also by a run stopped early)."""
        return self.results_file.is_file()

    def finished(self) -> bool:
        """Whether the run completed its configured schedule and has its results (selected
        on validation, and tested unless it was a validation-only run). A run stopped by
        ``max_steps`` has results but is not finished: running it again resumes it."""
        if not self.has_results():
            return False
        results = self.results()
        if "finished" in results:
            return bool(results["finished"])
        # results written before they said so: finished when every epoch ran
        return results.get("epochs_run", 0) >= self.config().get("epochs", 0)

    def has_checkpoint(self, kind: str) -> bool:
        folder = self.checkpoint_dir(kind)
        return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())

    def stored_seeds(self) -> list[int] | None:
        """The seeds of the several-seed run whose stacked state this folder holds
        (``None``: none)."""
        if not (self.config_file.is_file() and self.has_checkpoint("latest")):
            return None
        seeds = self.config().get("seeds", "")
        return seed_list(Config(seeds=seeds)) if seeds else None

    # ---- writing
    def write_config(self, config: Config) -> None:
        write_json(self.config_file, dataclasses.asdict(config))

    def write_results(self, results: dict) -> None:
        write_json(self.results_file, results)

    def write_history(self, history: list[dict]) -> None:
        if not primary():
            return
        tmp = self.history_file.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(h, sort_keys=True) + "\n" for h in history))
        tmp.replace(self.history_file)

    def check_config(self, config: Config, resumable: bool) -> None:
        """Refuse ``config`` where the folder holds a run (``resumable``: it has a
        ``latest`` checkpoint) of another config."""
        if resumable and self.config_file.is_file():
            changed = config_differences(self.config(), config)
            if changed:
                raise WorkdirError(
                    f"{self.path} holds a run with another config ({'; '.join(changed)}): "
                    f"resume it with the same settings, or use another --workdir")

    @contextlib.contextmanager
    def locked(self):
        """Create the folder and hold an exclusive lock on ``<path>/.lock`` while a run
        uses it (process 0 only; :class:`WorkdirError` if another process holds it). A
        folder this call created is removed again if the run stops before writing a file
        into it (a setting refused once the data is open)."""
        created = not self.path.exists()
        if self.path.exists() and not self.path.is_dir():
            raise WorkdirError(f"{self.path} is a file, not a work directory: choose another "
                               f"--workdir")
        self.path.mkdir(parents=True, exist_ok=True)
        if not primary():
            yield self
            return
        import fcntl

        file = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            owner = file.read().strip() or "another process"
            file.close()
            raise WorkdirError(f"{self.path} is in use by {owner}: wait for it to finish, or "
                               f"choose another --workdir") from None
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()}")
        file.flush()
        try:
            yield self
        except BaseException:
            if created and not any(p.is_file() and p.name != ".lock"
                                   for p in self.path.rglob("*")):
                shutil.rmtree(self.path, ignore_errors=True)
            raise
        finally:
            file.close()  # closing releases the lock
