"""The sweep engine: one registry of named runs, one plan, one way to execute it, one
collector, and the tables; ``experiments.compare``, ``experiments.select`` and the
learning curves are its command lines.

==============  ===========================================================================
module          what
==============  ===========================================================================
``registry``    named runs (:data:`RUNS`), families, scores, comparisons, protocol defaults
``plan``        :class:`Task`: dataset x run x seed x fraction x tuning value; its folder
``execute``     train in this process, seeds together, or a pool of pinned processes
``collect``     the summary of a finished run (the one reader of run folders)
``engine``      :func:`run`: tune on validation, train, D4-score, collect
``records``     run records kept in the repository: written when a run is done, validated
                when read; a run with one is done
``tables``      aggregates over seeds, family tables, selection tables, plots
==============  ===========================================================================
"""

from . import records
from .collect import summary
from .engine import Sweep, finished, run, tune
from .execute import MODES, check_finished_config, train, train_pool, train_together
from .plan import Task, config_sets, fraction_dir, tasks
from .registry import (
    COMPARISONS,
    CURVE_RUNS,
    CURVE_SETTINGS,
    EXTRA_SCORES,
    FAMILIES,
    PROTOCOL_DATASETS,
    PROTOCOL_RUNS,
    PROTOCOL_TUNE,
    RUNS,
    SCORES,
    ONE_BANK_CONTROLS,
    SELECTION_RUNS,
    Entry,
    Family,
    entry,
    order,
    run_config,
)
from .tables import (
    SELECTION_METRICS,
    chosen_dynamic,
    markdown,
    sections,
    selection_headline,
    selection_markdown,
    selection_rows,
    summarize,
    write_plots,
)

__all__ = [
    "COMPARISONS", "ONE_BANK_CONTROLS", "CURVE_RUNS", "CURVE_SETTINGS", "EXTRA_SCORES", "Entry",
    "FAMILIES", "Family", "MODES", "PROTOCOL_DATASETS", "PROTOCOL_RUNS", "PROTOCOL_TUNE",
    "RUNS", "SCORES", "SELECTION_METRICS", "SELECTION_RUNS", "Sweep", "Task",
    "check_finished_config", "config_sets",
    "entry", "chosen_dynamic", "finished", "fraction_dir", "markdown", "order", "records",
    "run", "run_config", "sections", "selection_headline", "selection_markdown",
    "selection_rows", "summarize", "summary", "tasks", "train", "train_pool", "train_together",
    "tune", "write_plots",
]
