"""Classifier families (CNN, G-CNN, dynamic G-CNN) and their registry."""

from ._densenet import DenseGNet
from ._small import SmallGCNN
from .flops import forward_flops, jaxpr_flops
from .registry import ModelSpec, available, count_params, create, spec

__all__ = ["DenseGNet", "SmallGCNN", "ModelSpec", "available", "count_params", "create", "spec", "forward_flops", "jaxpr_flops"]
