"""dgcnn_jax: dynamic group-equivariant convolutional networks in JAX.

Layout everywhere: images ``[B, H, W, C]``; group feature maps ``[B, H, W, C, |G|]``.
See :mod:`dgcnn_jax.groups` for the group convention.
"""

from . import dynamic, execution, testing
from .dynamic import linear_temperature
from .filters import group_filter_bank, lifting_filter_bank, transform_group_kernel
from .groups import P4, P4M, Z2, Group, available_groups, get_group
from .nn import (
    DynamicGroupConv,
    DynamicLiftingConv,
    GroupBatchNorm,
    GroupConv,
    GroupPool,
    LiftingConv,
)
from .norm import apply_batch_norm, batch_moments, batch_norm
from .ops import (
    add_bias,
    conv_padding,
    global_pool,
    group_conv,
    lifting_conv,
    orientation_pool,
    spatial_pool,
)

__version__ = "0.1.0"

__all__ = [
    "Group",
    "Z2",
    "P4",
    "P4M",
    "available_groups",
    "get_group",
    "lifting_filter_bank",
    "group_filter_bank",
    "transform_group_kernel",
    "lifting_conv",
    "group_conv",
    "conv_padding",
    "add_bias",
    "orientation_pool",
    "spatial_pool",
    "global_pool",
    "batch_moments",
    "batch_norm",
    "apply_batch_norm",
    "LiftingConv",
    "GroupConv",
    "GroupBatchNorm",
    "GroupPool",
    "DynamicLiftingConv",
    "DynamicGroupConv",
    "linear_temperature",
    "dynamic",
    "execution",
    "testing",
]
