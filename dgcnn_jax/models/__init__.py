"""Classifier families (CNN, G-CNN, dynamic G-CNN) and their registry."""

from ._small import SmallGCNN
from .registry import ModelSpec, available, count_params, create, spec

__all__ = ["SmallGCNN", "ModelSpec", "available", "count_params", "create", "spec"]
