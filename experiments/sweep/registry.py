"""One registry of named runs, the tables they belong to, the scores and the comparisons.

A name of :data:`RUNS` is an :class:`Entry`: a registered model, the config fields it
sets (applied with ``dataclasses.replace``) and its family (:data:`FAMILIES`: the table
it is shown in). Any registered model that is not named here runs as itself (family
``"other"``). Every sweep command (``compare``, ``select``, the learning curves) takes
its names from here, its scores from :data:`SCORES` and its paired tests from
:data:`COMPARISONS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dgcnn_jax import models
from experiments.configs import Config

__all__ = ["Entry", "Family", "FAMILIES", "RUNS", "entry", "run_config", "SCORES", "EXTRA_SCORES",
           "COMPARISONS", "ONE_BANK_CONTROLS", "PROTOCOL_DATASETS", "PROTOCOL_RUNS",
           "PROTOCOL_TUNE", "CURVE_RUNS", "CURVE_SETTINGS", "SELECTION_RUNS", "order"]


@dataclasses.dataclass(frozen=True)
class Family:
    """A table of results: its title, the runs of other families shown beside its own
    (first), and whether its runs belong to every dataset of a sweep or to
    ``--ablation-dataset`` only."""

    title: str
    references: tuple[str, ...] = ()
    every_dataset: bool = True


@dataclasses.dataclass(frozen=True)
class Entry:
    """A named run: a registered model, the config fields it sets, its family."""

    model: str
    family: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# Learning rate of the orientation-aware readout variants, chosen on validation AUC for
# p4m_dgcnn_orient (seeds 0-1; docs/results.md).
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
    "selection": Family(
        "options of the dynamic layer at the static width (validation only)",
        references=("p4m_gcnn",), every_dataset=False),
}

# The dynamic layer's options before the selection: the attention sees the mean only and
# the lifting layer is dynamic (the temperature schedule is the command line's).
_BEFORE = {"descriptor": "mean", "static_stem": False}
_RESIDUAL = {"parameterization": "residual"}
# what the selection chose: today's defaults (experiments/configs/default.py)
_CHOSEN = {"descriptor": "mean_max", "static_stem": True, "tau_anneal_fraction": 0.1}

RUNS = {
    "cnn": Entry("cnn", "parameter-matched"),
    # control: the plain CNN trained on random D4 transforms (what symmetry alone gives)
    "cnn_augment": Entry("cnn", "parameter-matched", {"augment": True}),
    "p4_gcnn": Entry("p4_gcnn", "parameter-matched"),
    "p4m_gcnn": Entry("p4m_gcnn", "parameter-matched"),
    "p4_dgcnn": Entry("p4_dgcnn", "parameter-matched"),
    "p4m_dgcnn": Entry("p4m_dgcnn", "parameter-matched"),  # K=4, invariant, annealed
    "p4_dgcnn_wide": Entry("p4_dgcnn_wide", "flop-matched"),
    "p4m_dgcnn_wide": Entry("p4m_dgcnn_wide", "flop-matched"),
    # controls at the same width: one bank (no mixing), and K frozen random banks mixed
    # by a trained attention (what mixing untrained kernels gives)
    "p4m_dgcnn_wide_k1": Entry("p4m_dgcnn_wide", "flop-matched", {"num_kernels": 1}),
    "p4m_dgcnn_wide_frozen": Entry("p4m_dgcnn_wide", "flop-matched", {"freeze_banks": True}),
    # the third form at the same width: attention over banks, kernel positions and fields,
    # and its one-kernel form (attention over positions and fields only)
    "p4m_odgcnn": Entry("p4m_odgcnn", "flop-matched"),
    "p4m_odgcnn_k1": Entry("p4m_odgcnn_k1", "flop-matched"),
    # banks mixed per output field, signed, starting from a bank per field (KernelWarehouse)
    "p4m_odgcnn_assign": Entry("p4m_odgcnn", "flop-matched", {
        "attention_targets": "field_banks,positions,in_fields,out_fields", "bank_mix": "signed",
        "bank_start": "assignment"}),
    "p4m_dgcnn_k1": Entry("p4m_dgcnn", "ablations", {"num_kernels": 1}),
    "p4m_dgcnn_k2": Entry("p4m_dgcnn", "ablations", {"num_kernels": 2}),
    "p4m_dgcnn_k8": Entry("p4m_dgcnn", "ablations", {"num_kernels": 8}),
    "p4m_dgcnn_equivariant": Entry("p4m_dgcnn", "ablations", {"attention": "equivariant"}),
    "p4m_dgcnn_no_anneal": Entry("p4m_dgcnn", "ablations",
                                 {"tau_initial": 1.0, "tau_final": 1.0}),
    # the CNN at the learning rate of the orientation-aware G-CNNs
    "cnn_lr1e-2": Entry("cnn", "orientation", {"learning_rate": ORIENTED_LEARNING_RATE}),
    **{f"{m}_orient": Entry(m, "orientation", {"readout": "orientation",
                                               "learning_rate": ORIENTED_LEARNING_RATE})
       for m in ("p4_gcnn", "p4m_gcnn", "p4_dgcnn", "p4m_dgcnn", "p4m_dgcnn_wide")},
    # the option selection of the dynamic layer at the width of p4m_gcnn (select)
    "dgcnn_wide": Entry("p4m_dgcnn_wide", "selection", _BEFORE),
    "dgcnn_wide_mixture": Entry("p4m_dgcnn_wide", "selection",
                                {**_BEFORE, "bank_init": "mixture"}),
    "dgcnn_wide_residual": Entry("p4m_dgcnn_wide", "selection", {**_BEFORE, **_RESIDUAL}),
    "dgcnn_wide_residual_all": Entry("p4m_dgcnn_wide", "selection", {**_RESIDUAL, **_CHOSEN}),
    "dgcnn_wide_banks_all": Entry("p4m_dgcnn_wide", "selection", _CHOSEN),
    # one change at a time taken back from the defaults
    "dgcnn_wide_all_but_max": Entry("p4m_dgcnn_wide", "selection",
                                    {**_CHOSEN, "descriptor": "mean"}),
    "dgcnn_wide_all_but_stem": Entry("p4m_dgcnn_wide", "selection",
                                     {**_CHOSEN, "static_stem": False}),
    "dgcnn_wide_all_but_tau": Entry("p4m_dgcnn_wide", "selection",
                                    {**_CHOSEN, "tau_anneal_fraction": 0.3333}),
    # controls at the defaults: one bank, and frozen random banks
    "dgcnn_wide_k1": Entry("p4m_dgcnn_wide", "selection", {**_CHOSEN, "num_kernels": 1}),
    "dgcnn_wide_frozen": Entry("p4m_dgcnn_wide", "selection",
                               {**_CHOSEN, "freeze_banks": True}),
}
"""Every named run, in table order."""

SELECTION_RUNS = ("p4m_gcnn", *(n for n, e in RUNS.items() if e.family == "selection"))
"""The runs of ``experiments.select`` unless ``--variants`` names others."""

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

CURVE_RUNS = ("cnn", "cnn_augment", "p4m_gcnn", "p4m_dgcnn", "p4m_dgcnn_wide")
"""The runs of a learning-curve sweep unless ``--models`` names others."""

CURVE_SETTINGS = ("steps_per_epoch=50", "epochs=6")
"""What a learning-curve sweep sets unless ``--set`` says otherwise: 300 steps of 32
images for every fraction (0.8 passes over the whole PBC training split, 80 over 1% of
it), validated every 50 steps. Sized for this project's 2-core CPU (about 23 minutes
per fraction and seed for the five curve runs on one core)."""

SCORES = ("accuracy", "balanced_accuracy", "auc", "nll")
"""Test metrics kept per seed (``test_<name>`` in a run summary) and summarised."""

EXTRA_SCORES = ("f1", "auc_per_group")
"""Test metrics kept and summarised where a run has them: F1 (of class 1 for two classes,
the literature's score on IDC; macro otherwise), and the AUC over groups (per patient on
IDC) of a dataset with groups."""

COMPARISONS = (
    ("p4m_dgcnn_wide", "p4m_gcnn"), ("p4m_dgcnn", "p4m_gcnn"), ("p4m_gcnn", "cnn"),
    ("p4m_dgcnn_wide", "cnn"), ("p4m_dgcnn", "cnn"), ("p4m_gcnn", "cnn_augment"),
    ("p4m_dgcnn_wide", "p4m_dgcnn_wide_k1"), ("p4m_dgcnn_wide", "p4m_dgcnn_wide_frozen"),
    ("p4m_dgcnn_wide", "cnn_augment"), ("p4m_dgcnn_wide", "p4m_dgcnn"),
    ("p4m_dgcnn", "cnn_augment"), ("cnn_augment", "cnn"),
    ("p4m_odgcnn", "p4m_gcnn"), ("p4m_odgcnn", "p4m_dgcnn_wide"), ("p4m_odgcnn", "p4m_odgcnn_k1"),
    ("p4m_odgcnn_assign", "p4m_odgcnn"), ("p4m_odgcnn_assign", "p4m_gcnn"),
    ("p4m_odgcnn_assign", "p4m_dgcnn_wide"), ("p4m_odgcnn_assign", "p4m_odgcnn_k1"),
    ("p4m_dgcnn_wide_orient", "p4m_gcnn_orient"))
"""The paired comparisons (A vs B: differences A - B) tested wherever both ran: dynamic
vs static p4m at the same width (primary) and parameter-matched, p4m vs the CNN, the
symmetry control, the dynamic net against its one-bank and frozen-bank controls, and the
third form against the static net, the published layer and its one-kernel form."""


ONE_BANK_CONTROLS = {"p4m_dgcnn_wide": "p4m_dgcnn_wide_k1", "p4m_odgcnn": "p4m_odgcnn_k1",
                     "p4m_odgcnn_assign": "p4m_odgcnn_k1"}
"""The one-bank control of each dynamic form at the static width: the same layer with one
kernel (the published layer: a static net with an extra branch; the third form: position
and field attention only)."""


def entry(name: str) -> Entry:
    """The :class:`Entry` of a run name or registered model; ``ValueError`` otherwise."""
    if name in RUNS:
        return RUNS[name]
    if name in models.available():
        return Entry(name, "other")
    raise ValueError(f"model: unknown model or sweep run {name!r}; known: "
                     f"{', '.join(RUNS)}, or a registered model: "
                     f"{', '.join(models.available())}")


def run_config(base: Config, dataset: str, name: str, seed: int) -> Config:
    """The config of one run: ``base`` with the run's overrides, dataset, model and seed."""
    run = entry(name)
    return dataclasses.replace(base, **run.overrides, dataset=dataset, model=run.model,
                               seed=seed)


def order(name: str) -> int:
    """A name's place in table order (:data:`RUNS`, then the rest)."""
    names = list(RUNS)
    return names.index(name) if name in names else len(names)
