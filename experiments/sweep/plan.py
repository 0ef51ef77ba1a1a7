"""What a sweep asks for: tasks (dataset x run x seed x fraction x tuning value), each
with its config and work directory.

Layout under a sweep's root: ``[fraction<F>/]<dataset>/<name>/seed<N>`` for a run, and
``[fraction<F>/]tune/<dataset>/<name>/<field>=<value>/seed<N>`` for a tuning run
(validation only). A run whose folder has its results is finished
(:meth:`experiments.training.Workdir.finished`) and is not trained again.
"""

from __future__ import annotations

import dataclasses
import pathlib

from experiments.configs import Config, get_config, override
from experiments.training import Workdir

from .registry import run_config

__all__ = ["Task", "fraction_dir", "tasks", "config_sets"]


def fraction_dir(root: pathlib.Path, fraction: float) -> pathlib.Path:
    """The sweep folder of one training fraction."""
    return pathlib.Path(root) / f"fraction{fraction:g}"


@dataclasses.dataclass(frozen=True)
class Task:
    """One run of a sweep."""

    dataset: str
    name: str
    seed: int
    fraction: float | None = None  # None: the whole training split, no fraction folder
    tune: tuple[str, str] | None = None  # (field, value): a validation-only tuning run
    validation_only: bool = False  # score_test=false: the test split is not read

    def root(self, root: pathlib.Path) -> pathlib.Path:
        """The folder of this task's fraction (the sweep root without one)."""
        return pathlib.Path(root) if self.fraction is None else fraction_dir(root,
                                                                              self.fraction)

    def workdir(self, root: pathlib.Path) -> Workdir:
        base = self.root(root)
        if self.tune:
            base = base / "tune" / self.dataset / self.name / "=".join(self.tune)
        else:
            base = base / self.dataset / self.name
        return Workdir(base / f"seed{self.seed}")

    def group(self) -> tuple:
        """What the seeds of one run share (they may train together)."""
        return (self.dataset, self.name, self.fraction, self.tune, self.validation_only)

    def config(self, base: Config, chosen: tuple[str, str] | None = None) -> Config:
        """The run's config: ``base`` with the fraction, the run's overrides, dataset,
        model and seed, then the tuning value (this task's, or ``chosen`` by tuning) and
        ``score_test=false`` for validation-only runs."""
        if self.fraction is not None:
            base = dataclasses.replace(base, train_fraction=self.fraction)
        config = run_config(base, self.dataset, self.name, self.seed)
        setting = self.tune or chosen
        sets = ([f"{setting[0]}={setting[1]}"] if setting else []) + (
            ["score_test=false"] if self.tune or self.validation_only else [])
        return override(config, sets)


def tasks(datasets_and_names: list[tuple[str, str]], seeds_of, *,
          fractions: list[float] | None = None, validation_only: bool = False) -> list[Task]:
    """Every (fraction, dataset, name, seed) in order; ``seeds_of(dataset)`` gives a
    dataset's seeds."""
    return [Task(d, n, s, f, validation_only=validation_only)
            for f in (fractions or [None]) for d, n in datasets_and_names for s in seeds_of(d)]


def config_sets(config: Config) -> list[str]:
    """``key=value`` items that make ``config`` from the default one on a command line
    (``python -m experiments.train --set ...``)."""
    default = get_config()
    out = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value != getattr(default, field.name):
            text = ("none" if value is None else str(value).lower() if isinstance(value, bool)
                    else repr(value) if isinstance(value, float) else str(value))
            out.append(f"{field.name}={text}")
    return out
