"""Classifier families (CNN, G-CNN, dynamic G-CNN) and their registry."""

from ._densenet import DenseGNet
from ._small import READOUTS, SmallGCNN
from ._flops import forward_flops, jaxpr_flops
from ._registry import ModelSpec, available, count_params, create, flops_per_image, spec

__all__ = ["DenseGNet", "READOUTS", "SmallGCNN", "ModelSpec", "available", "count_params",
           "create", "spec", "flops_per_image", "forward_flops", "jaxpr_flops"]
