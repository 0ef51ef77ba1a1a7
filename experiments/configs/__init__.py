"""Experiment configurations (``get_config()`` per module), command-line overrides and
their validation (:mod:`.validation`).

``default``: the dynamic p4m G-CNN on BreastMNIST (2 CPU cores); ``pcam``: the
P4M-DenseNet protocol on PatchCamelyon (an accelerator).
"""

from __future__ import annotations

from . import default, pcam
from .default import LEGACY_VALUES, Config, from_stored, override
from .validation import DYNAMIC_FIELDS, PIPELINES, model_kwargs, num_devices, pipeline, validate

CONFIGS = {"default": default.get_config, "pcam": pcam.get_config}


def get_config(name: str = "default") -> Config:
    """The named configuration (``"default"`` or ``"pcam"``)."""
    if name not in CONFIGS:
        raise ValueError(f"config: unknown config {name!r}; known configs: "
                         f"{', '.join(CONFIGS)}")
    return CONFIGS[name]()


__all__ = ["CONFIGS", "Config", "get_config", "override", "validate", "num_devices",
           "model_kwargs", "from_stored", "LEGACY_VALUES", "DYNAMIC_FIELDS", "PIPELINES",
           "pipeline"]
