"""Small classifiers for 28x28 MedMNIST images: CNN, G-CNN and dynamic G-CNN.

One topology for every family, so that they differ only in the group and in whether
the convolutions are dynamic:

    conv(C_in -> w) - BN - ReLU
    2 x [conv(w -> w) - BN - ReLU]
    2x2 max pooling (exact: needs even height and width)
    3 x [conv(w -> w) - BN - ReLU]
    global mean pooling over space and group (invariant) - dropout - linear head

``readout="orientation"`` pools over space only and gives the head every field at every
group element (``width * |G|`` features): the convolutions stay equivariant, the logits
may depend on the orientation (for images whose orientation carries information, such
as ultrasound with the transducer at the top).

The first convolution lifts images to group feature maps, the others are group
convolutions; the plain CNN is the same network on the trivial group ``z2``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from .. import _init, execution, ops
from .._checks import check_choice, check_image
from ..groups import Group, get_group
from ..nn import DynamicGroupConv, DynamicLiftingConv, GroupBatchNorm, GroupConv, LiftingConv

__all__ = ["SmallGCNN"]

NUM_CONV = 6
POOL_AFTER = 3  # the 2x2 pooling follows this many convolutions
READOUTS = ("invariant", "orientation")


class SmallGCNN(nnx.Module):
    """6-convolution classifier over ``group`` (``z2`` gives a plain CNN).

    Args:
      in_channels: image channels (1 for grey MedMNIST, 3 for colour).
      num_classes: logits per image.
      group: ``"z2"``, ``"p4"`` or ``"p4m"``.
      width: fields per layer (channels = width * |G|).
      dynamic: use dynamic convolutions with ``num_kernels`` kernels and ``attention``.
      static_stem: keep the first (lifting) convolution static; dynamic from the second.
      parameterization, bank_init, delta_scale, descriptor, freeze_banks: options of the
        dynamic layers (see :class:`dgcnn_jax.DynamicGroupConv`).
      dropout: dropout rate before the head.
      impl: how every lifting and group convolution runs (a name of
        :data:`dgcnn_jax.execution.IMPLS`; ``"orbit"``: exactly equivariant at any precision).
      precision: of every convolution and matrix product, the head included (a name of
        :data:`dgcnn_jax.execution.PRECISIONS`; ``"highest"`` keeps exact equivariance on
        GPUs and TPUs).
      readout: ``"invariant"`` (mean over space and group: logits invariant under the
        group) or ``"orientation"`` (mean over space only; the head sees ``width * |G|``
        features and the logits are not invariant).
      dtype: of the convolutions (None: float32; ``jnp.bfloat16`` for mixed
        precision); batch-norm statistics, attention, global pooling and the head stay
        float32, and the logits are float32.
      param_dtype: of the stored parameters (float32).

    Call: ``model(x, tau=1.0)`` with ``x`` ``[B, H, W, in_channels]``, ``H`` and ``W``
    even and at least 4; returns logits ``[B, num_classes]``, invariant under the group
    with the default ``readout``.
    """

    def __init__(self, in_channels: int, num_classes: int, group: Group | str, width: int, *,
                 dynamic: bool = False, num_kernels: int = 4, attention: str = "invariant",
                 static_stem: bool = False, parameterization: str = "banks",
                 bank_init: str = "per_bank", delta_scale: float = 0.0,
                 descriptor: str = "mean", freeze_banks: bool = False,
                 targets=("banks",), bank_mix: str = "softmax", bank_start: str = "random",
                 dropout: float = 0.1, readout: str = "invariant",
                 precision: str = execution.DEFAULT_PRECISION, impl: str = "auto",
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        check_choice(readout, "readout", READOUTS)
        self.group = get_group(group)
        self.readout = readout
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dynamic = dynamic
        extra = dict(num_kernels=num_kernels, attention=attention,
                     parameterization=parameterization, bank_init=bank_init,
                     delta_scale=delta_scale, descriptor=descriptor,
                     freeze_banks=freeze_banks, targets=targets,
                     bank_mix=bank_mix, bank_start=bank_start) if dynamic else {}
        extra["precision"], extra["impl"] = precision, impl
        types = {"dtype": dtype, "param_dtype": param_dtype}
        extra.update(types)
        self.static_stem = bool(static_stem)
        lift_cls = DynamicLiftingConv if dynamic and not static_stem else LiftingConv
        conv_cls = DynamicGroupConv if dynamic else GroupConv
        convs = [lift_cls(in_channels, width, 3, self.group, use_bias=False, rngs=rngs,
                          **(extra if lift_cls is DynamicLiftingConv else
                             {"precision": precision, "impl": impl, **types}))]
        convs += [conv_cls(width, width, 3, self.group, use_bias=False, rngs=rngs, **extra)
                  for _ in range(NUM_CONV - 1)]
        self.convs = nnx.List(convs)
        self.norms = nnx.List([GroupBatchNorm(width, rngs=rngs, **types) for _ in range(NUM_CONV)])
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        features = width if readout == "invariant" else width * self.group.order
        self.head = nnx.Linear(features, num_classes, rngs=rngs,
                               kernel_init=_init.lecun_normal(), param_dtype=param_dtype,
                               dtype=jnp.float32, precision=execution.as_precision(precision))

    def check_input(self, x) -> None:
        """Raise ``ValueError`` before any compute if ``x`` does not fit the model."""
        _, h, w, _ = check_image(x, "x", channels=self.in_channels)
        if h < 4 or w < 4 or h % 2 or w % 2:
            raise ValueError(
                f"x: this model needs even height and width of at least 4 (one exact 2x2 "
                f"pooling), got {h}x{w}")

    def __call__(self, x: jax.Array, *, tau=1.0) -> jax.Array:
        return self._forward(x, tau, None)

    def intermediates(self, x: jax.Array, *, tau=1.0) -> dict[str, list[jax.Array]]:
        """What each convolution layer computes on ``x``, for figures and checks.

        Returns ``{"features": [...], "attention": [...], "logits": [...]}``: the
        feature map after each convolution, batch norm and ReLU (``[B, H, W, width, |G|]``;
        ``[B, H, W, width, 1]`` for z2), the mixing weights of each dynamic layer
        (``[B, K]`` invariant, ``[B, K, |G|]`` equivariant; empty for static models), and
        a one-element list with the logits.
        """
        out = {"features": [], "attention": []}
        out["logits"] = [self._forward(x, tau, out)]
        return out

    def _forward(self, x, tau, record):
        self.check_input(x)
        y = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if isinstance(conv, (DynamicLiftingConv, DynamicGroupConv)):
                if record is not None:
                    record["attention"].append(conv.attention_weights(y, tau))
                y = conv(y, tau=tau)
            else:
                y = conv(y)
            y = jax.nn.relu(norm(y))
            if record is not None:
                record["features"].append(y)
            if i + 1 == POOL_AFTER:
                y = ops.spatial_pool(y, 2)
        y = y.astype(jnp.float32)  # the pooling and the head in float32
        if self.readout == "invariant":
            y = ops.global_pool(y, "mean")
        else:  # [B, H, W, width, |G|] -> [B, width * |G|]
            y = jnp.mean(y, axis=(1, 2)).reshape(y.shape[0], -1)
        return self.head(self.dropout(y))


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (``nnx.Param`` entries); also of an abstract model
    (``nnx.eval_shape``), whose parameters are shapes only."""
    state = nnx.state(model, nnx.Param)
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(state)))
