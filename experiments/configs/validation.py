"""Checks of a :class:`~experiments.configs.Config` and what follows from it.

``validate(config)`` raises ``ValueError`` naming the field for a bad configuration,
before any data is read or anything is computed; ``model_kwargs(config)`` gives the
keyword arguments of ``dgcnn_jax.models.create`` that the config sets; ``num_devices``
the number of devices a run uses.
"""

from __future__ import annotations

import math

import jax

from dgcnn_jax import dynamic, execution, models, nn

from .default import Config

__all__ = ["validate", "num_devices", "model_kwargs", "pipeline", "DYNAMIC_FIELDS",
           "PIPELINES"]

PIPELINES = ("auto", "device", "host")
"""Values of ``Config.pipeline``."""

DTYPES = ("float32", "bfloat16", "float16")
"""Values of ``Config.dtype``: of the convolutions (mixed precision below float32)."""

DYNAMIC_FIELDS = ("num_kernels", "attention", "parameterization", "bank_init", "delta_scale",
                  "descriptor", "static_stem", "freeze_banks", "attention_targets",
                  "bank_mix", "bank_start")
"""Config fields that set options of the dynamic layers (only for dynamic models)."""


def validate(config: Config) -> None:
    """Raise ``ValueError`` for a bad configuration, before any data or compute."""
    from experiments import datasets  # the data stack (grain), needed for dataset names

    if config.model not in models.available():
        raise ValueError(f"model: unknown model {config.model!r}; known models: "
                         f"{', '.join(models.available())}")
    datasets.dataset_facts(config.dataset, config.data_dir)  # unknown names list known ones
    for name in ("epochs", "batch_size", "eval_batch_size"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    for name in ("max_steps", "checkpoint_every_steps"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected an int >= 0 (0: none), got {value!r}")
    _check_optimisation(config)
    _check_data(config)
    _check_model(config)
    devices = num_devices(config)
    for name in ("batch_size", "eval_batch_size"):
        if getattr(config, name) % devices:
            raise ValueError(f"{name}: {getattr(config, name)} is not divisible by the number "
                             f"of devices ({devices})")


def _check_optimisation(config: Config) -> None:
    if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
        raise ValueError(f"learning_rate: expected a finite value > 0, got "
                         f"{config.learning_rate!r}")
    for name in ("weight_decay", "warmup_epochs", "grad_clip_norm", "tau_anneal_epochs",
                 "momentum", "delta_scale"):
        value = getattr(config, name)
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name}: expected a finite value >= 0, got {value!r}")
    if config.optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer: expected 'adamw' or 'sgd', got {config.optimizer!r}")
    for name in ("tau_initial", "tau_final"):
        value = getattr(config, name)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name}: the temperature must be a finite value > 0, got "
                             f"{value!r}")
    if not 0 <= config.tau_anneal_fraction <= 1:  # (NaN fails too)
        raise ValueError(f"tau_anneal_fraction: expected a fraction in [0, 1] (0: use "
                         f"tau_anneal_epochs), got {config.tau_anneal_fraction!r}")
    if config.bank_weight_decay is not None and not (
            config.bank_weight_decay >= 0 and math.isfinite(config.bank_weight_decay)):
        raise ValueError(f"bank_weight_decay: expected a value >= 0 (or none: weight_decay), "
                         f"got {config.bank_weight_decay!r}")


def _check_data(config: Config) -> None:
    from experiments import datasets

    if not 0 < config.train_fraction <= 1:  # (NaN fails too)
        raise ValueError(f"train_fraction: expected a fraction in (0, 1], got "
                         f"{config.train_fraction!r}")
    if config.train_fraction != 1 and config.dataset == "pcam":
        raise ValueError("train_fraction: subsets are for the in-memory datasets, not pcam")
    if isinstance(config.input_size, bool) or not isinstance(config.input_size, int) \
            or config.input_size < 0:
        raise ValueError(f"input_size: expected an int >= 0 (0: the dataset's default view), "
                         f"got {config.input_size!r}")
    size = datasets.view_size(config.dataset, config.input_size, config.data_dir)
    if size < 4 or size % 2:
        raise ValueError(f"input_size: the models pool by 2 exactly, which needs an even "
                         f"size of at least 4; got {size}")
    if isinstance(config.data_seed, bool) or not isinstance(config.data_seed, int) \
            or config.data_seed < 0:
        raise ValueError(f"data_seed: expected an int >= 0, got {config.data_seed!r}")
    if config.pipeline not in PIPELINES:
        raise ValueError(f"pipeline: expected one of {', '.join(PIPELINES)}, got "
                         f"{config.pipeline!r}")
    if config.pipeline == "device":
        if config.dataset in datasets.SOURCE_DATASETS:
            raise ValueError(f"pipeline: {config.dataset} is read from disk by random access "
                             f"and does not fit in memory; use 'host' or 'auto'")
        if config.checkpoint_every_steps:
            raise ValueError("pipeline: the device pipeline saves at epoch boundaries only; "
                             "use 'host' (or 'auto') with checkpoint_every_steps")
        if jax.process_count() > 1:
            raise ValueError("pipeline: the device pipeline runs in one process; use 'host' "
                             "(or 'auto') with jax.distributed")
    if isinstance(config.steps_per_epoch, bool) or not isinstance(config.steps_per_epoch, int) \
            or config.steps_per_epoch < 0:
        raise ValueError(f"steps_per_epoch: expected an int >= 0 (0: one pass over the "
                         f"training split), got {config.steps_per_epoch!r}")
    if config.steps_per_epoch and pipeline(config) != "device":
        raise ValueError("steps_per_epoch: epochs of a set number of steps need the device "
                         "pipeline (a 28 px dataset, one process, checkpoint_every_steps=0)")
    if config.seeds:
        try:
            seeds = [int(x) for x in str(config.seeds).split(",")]
        except ValueError:
            seeds = [-1]
        if min(seeds) < 0 or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds: expected distinct ints >= 0 separated by commas, e.g. "
                             f"0,1,2, got {config.seeds!r}")
        if pipeline(config) != "device":
            raise ValueError("seeds: several seeds train together on the device pipeline "
                             "only (a 28 px dataset, one process, checkpoint_every_steps=0)")


def _check_model(config: Config) -> None:
    if not 0 <= config.dropout < 1:  # (NaN fails too)
        raise ValueError(f"dropout: expected a rate in [0, 1), got {config.dropout!r}")
    if config.impl not in execution.IMPLS:
        raise ValueError(f"impl: expected one of {', '.join(execution.IMPLS)}, got "
                         f"{config.impl!r}")
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {config.dtype!r}")
    if config.precision not in execution.PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(execution.PRECISIONS)}, got "
                         f"{config.precision!r}")
    defaults = Config()  # a dynamic field counts as set where it differs from the default
    dynamic_fields = {name: getattr(config, name) for name in DYNAMIC_FIELDS
                      if getattr(config, name) != getattr(defaults, name)}
    if dynamic_fields and not models.spec(config.model).dynamic:
        raise ValueError(f"{', '.join(dynamic_fields)}: {config.model} has no dynamic layers; "
                         f"leave {'it' if len(dynamic_fields) == 1 else 'them'} at the "
                         f"default")
    small_only = [n for n in DYNAMIC_FIELDS[2:] if n in dynamic_fields]
    if small_only and models.spec(config.model).input_size != 28:
        raise ValueError(f"{', '.join(small_only)}: only the 28 px models take these options, "
                         f"not {config.model}")
    for name, choices in (("parameterization", nn.PARAMETERIZATIONS),
                          ("bank_init", nn.BANK_INITS),
                          ("descriptor", tuple(dynamic.DESCRIPTORS))):
        if getattr(config, name) and getattr(config, name) not in choices:
            raise ValueError(f"{name}: expected one of {', '.join(choices)} ('': the model's "
                             f"default), got {getattr(config, name)!r}")
    if config.bank_start and config.bank_start not in nn.BANK_STARTS:
        raise ValueError(f"bank_start: expected one of {', '.join(nn.BANK_STARTS)} ('': the "
                         f"model's default), got {config.bank_start!r}")
    if config.bank_mix and config.bank_mix not in dynamic.BANK_MIXES:
        raise ValueError(f"bank_mix: expected one of {', '.join(dynamic.BANK_MIXES)} ('': the "
                         f"model's default), got {config.bank_mix!r}")
    for target in filter(None, str(config.attention_targets).split(",")):
        if target not in dynamic.TARGETS:
            raise ValueError(f"attention_targets: expected names from "
                             f"{', '.join(dynamic.TARGETS)} separated by commas ('': the "
                             f"model's), got {config.attention_targets!r}")
    if config.num_kernels or config.attention:
        if isinstance(config.num_kernels, bool) or not isinstance(config.num_kernels, int) \
                or config.num_kernels < 0:
            raise ValueError(f"num_kernels: expected an int >= 1 (0: the model's default), "
                             f"got {config.num_kernels!r}")
        if config.attention not in ("", "invariant", "equivariant"):
            raise ValueError(f"attention: expected 'invariant' or 'equivariant' ('': the "
                             f"model's default), got {config.attention!r}")
    if config.readout:
        if models.spec(config.model).input_size != 28:
            raise ValueError(f"readout: only the 28 px models have a readout choice, not "
                             f"{config.model}; leave it at ''")
        if config.readout not in models.READOUTS:
            raise ValueError(f"readout: expected one of {', '.join(models.READOUTS)} ('': the "
                             f"model's default), got {config.readout!r}")


def pipeline(config: Config) -> str:
    """The input pipeline a run uses, ``"device"`` or ``"host"`` (``config.pipeline``
    with ``"auto"`` resolved)."""
    from experiments import datasets

    if config.pipeline != "auto":
        return config.pipeline
    fits = config.dataset not in datasets.SOURCE_DATASETS
    return "device" if (fits and jax.process_count() == 1
                        and not config.checkpoint_every_steps) else "host"


def num_devices(config: Config) -> int:
    """Devices the run uses: ``config.num_devices``, or all (of every process) for 0."""
    available = jax.device_count()  # all processes' devices after jax.distributed
    if config.num_devices < 0 or config.num_devices > available:
        raise ValueError(f"num_devices: expected 0 (all) to {available}, got "
                         f"{config.num_devices}")
    return config.num_devices or available


def model_kwargs(config: Config) -> dict:
    """Keyword arguments for ``models.create`` from the config (dropout, precision, impl, readout,
    and the dynamic layers' options for dynamic models)."""
    kwargs = {"dropout": config.dropout, "precision": config.precision}
    if config.impl != "auto":
        kwargs["impl"] = config.impl
    if config.dtype != "float32":
        kwargs["dtype"] = config.dtype
    if config.num_kernels:
        kwargs["num_kernels"] = config.num_kernels
    if config.attention:
        kwargs["attention"] = config.attention
    if config.readout:
        kwargs["readout"] = config.readout
    spec = models.spec(config.model)
    if spec.dynamic and spec.input_size == 28:  # the options of the 28 px dynamic family
        for name in DYNAMIC_FIELDS[2:]:
            if getattr(config, name) != "":  # "": the layer's own default
                kwargs["targets" if name == "attention_targets" else name] = \
                    getattr(config, name)
    return kwargs
