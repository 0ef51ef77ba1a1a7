"""Experiment configurations (``get_config()`` per module) and command-line overrides."""

from .default import Config, get_config, override

__all__ = ["Config", "get_config", "override"]
