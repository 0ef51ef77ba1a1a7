"""DenseNets for 96x96 PatchCamelyon patches: plain, p4, p4m and dynamic p4m.

In the spirit of the P4M-DenseNet of Veeling et al. (2018): densely connected
blocks of ``BN - ReLU - conv3x3`` layers, each adding ``growth`` fields that are
concatenated to its input, separated by transitions ``BN - ReLU - conv1x1`` (halving
the fields) and exact 2x2 average pooling, then ``BN - ReLU``, invariant global
pooling, dropout and a linear head. The growth rates 26 / 13 / 9 (plain / p4 / p4m)
are the parameter-matched widths used for PCam by Romero et al. (2020); the dynamic
p4m net uses K kernel banks per convolution at a width that matches the parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .. import _init, execution, ops
from .._checks import check_image
from ..groups import Group, get_group
from ..nn import DynamicGroupConv, DynamicLiftingConv, GroupBatchNorm, GroupConv, LiftingConv

__all__ = ["DenseGNet"]


class DenseGNet(nnx.Module):
    """DenseNet over ``group`` (``z2`` gives a plain DenseNet).

    Args:
      in_channels, num_classes: image channels and logits.
      group: ``"z2"``, ``"p4"`` or ``"p4m"``.
      growth: fields added by each dense layer (the stem has ``2 * growth``).
      blocks: dense layers per block; a transition with 2x2 pooling follows every
        block but the last, so inputs need sides divisible by ``2 ** (len(blocks) - 1)``.
      dynamic: dynamic convolutions (``num_kernels`` banks, invariant attention).
      impl: how every lifting and group convolution runs (a name of
        :data:`dgcnn_jax.execution.IMPLS`; ``"orbit"``: exactly equivariant at any precision).
      precision: of every convolution and matrix product (a name of
        :data:`dgcnn_jax.execution.PRECISIONS`).
      dtype, param_dtype: of the convolutions (None: float32; ``jnp.bfloat16`` for mixed
        precision) and of the stored parameters (float32), as for ``SmallGCNN``.
    """

    def __init__(self, in_channels: int, num_classes: int, group: Group | str, growth: int, *,
                 blocks: tuple[int, ...] = (2, 2, 2, 2), dynamic: bool = False,
                 num_kernels: int = 4, attention: str = "invariant", dropout: float = 0.1,
                 precision: str = execution.DEFAULT_PRECISION, impl: str = "auto",
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.group = get_group(group)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dynamic = dynamic
        self.blocks = tuple(blocks)
        extra = dict(num_kernels=num_kernels, attention=attention) if dynamic else {}
        extra["precision"], extra["impl"] = precision, impl
        types = {"dtype": dtype, "param_dtype": param_dtype}
        extra.update(types)
        lift_cls = DynamicLiftingConv if dynamic else LiftingConv
        conv_cls = DynamicGroupConv if dynamic else GroupConv
        width = 2 * growth
        self.stem = lift_cls(in_channels, width, 3, self.group, use_bias=False, rngs=rngs,
                             **extra)
        layers, transitions = [], []
        for b, n in enumerate(self.blocks):
            for _ in range(n):
                layers.append((GroupBatchNorm(width, rngs=rngs, **types),
                               conv_cls(width, growth, 3, self.group, use_bias=False,
                                        rngs=rngs, **extra)))
                width += growth
            if b + 1 < len(self.blocks):
                out = width // 2
                transitions.append((GroupBatchNorm(width, rngs=rngs, **types),
                                    conv_cls(width, out, 1, self.group, use_bias=False,
                                             rngs=rngs, **extra)))
                width = out
        self.layers = nnx.List([nnx.List(pair) for pair in layers])
        self.transitions = nnx.List([nnx.List(pair) for pair in transitions])
        self.final_norm = GroupBatchNorm(width, rngs=rngs, **types)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(width, num_classes, rngs=rngs,
                               kernel_init=_init.lecun_normal(), param_dtype=param_dtype,
                               dtype=jnp.float32, precision=execution.as_precision(precision))

    def check_input(self, x) -> None:
        """Raise ``ValueError`` before any compute if ``x`` does not fit the model."""
        _, h, w, _ = check_image(x, "x", channels=self.in_channels)
        factor = 2 ** (len(self.blocks) - 1)
        if h % factor or w % factor or h < 2 * factor or w < 2 * factor:
            raise ValueError(
                f"x: this model pools {len(self.blocks) - 1} times (exact 2x2 pooling): height "
                f"and width must be multiples of {factor} and at least {2 * factor}, got "
                f"{h}x{w}")

    def _conv(self, conv, y, tau):
        return conv(y, tau=tau) if self.dynamic else conv(y)

    def __call__(self, x: jax.Array, *, tau=1.0) -> jax.Array:
        self.check_input(x)
        y = self._conv(self.stem, x, tau)
        layer = 0
        for b, n in enumerate(self.blocks):
            for _ in range(n):
                norm, conv = self.layers[layer]
                new = self._conv(conv, jax.nn.relu(norm(y)), tau)
                y = jnp.concatenate([y, new], axis=3)
                layer += 1
            if b < len(self.transitions):
                norm, conv = self.transitions[b]
                y = ops.spatial_pool(self._conv(conv, jax.nn.relu(norm(y)), tau), 2,
                                     kind="mean")
        y = jax.nn.relu(self.final_norm(y)).astype(jnp.float32)  # pooling, head: float32
        return self.head(self.dropout(ops.global_pool(y, "mean")))
