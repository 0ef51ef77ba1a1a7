"""Thin ``flax.nnx`` modules over the functional core.

Each module holds its fields and parameters and calls one core function; layouts are
those of :mod:`dgcnn_jax.ops`. Kernels are initialised He-style with the group fan-in
(``fan_in = k * k * C_in * |G_in|``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from . import norm, ops
from ._checks import check_choice, check_positive_int
from .groups import Group, get_group

__all__ = ["LiftingConv", "GroupConv", "GroupBatchNorm", "GroupPool", "default_kernel_init"]

default_kernel_init = jax.nn.initializers.he_normal()
"""He-normal over the fan-in of the last-but-one axis times the receptive field; for
group kernels ``[k, k, C_in, |G|, C_out]`` that is ``k * k * C_in * |G|``."""


class _ConvBase(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 group: Group | str, *, padding: ops.Padding, dilation: int, use_bias: bool,
                 kernel_init, kernel_shape: tuple[int, ...], rngs: nnx.Rngs):
        self.group = get_group(group)
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.dilation = check_positive_int(dilation, "dilation")
        ops.conv_padding(padding, kernel_size, dilation)  # validates early
        self.padding = padding
        self.kernel = nnx.Param(kernel_init(rngs.params(), kernel_shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if use_bias else None

    def _finish(self, y):
        return ops.add_bias(y, self.bias[...]) if self.bias is not None else y


class LiftingConv(_ConvBase):
    """Lifting convolution Z2 -> G: ``[B, H, W, C_in] -> [B, H', W', C_out, |G|]``.

    Parameters: ``kernel [k, k, C_in, C_out]`` and ``bias [C_out]`` (shared over G).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 group: Group | str = "p4m", *, padding: ops.Padding = "SAME",
                 dilation: int = 1, use_bias: bool = True, kernel_init=default_kernel_init,
                 rngs: nnx.Rngs):
        super().__init__(in_channels, out_channels, kernel_size, group, padding=padding,
                         dilation=dilation, use_bias=use_bias, kernel_init=kernel_init,
                         kernel_shape=(kernel_size, kernel_size, in_channels, out_channels),
                         rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = ops.lifting_conv(x, self.kernel[...], self.group, padding=self.padding,
                             dilation=self.dilation)
        return self._finish(y)


class GroupConv(_ConvBase):
    """Group convolution G -> G: ``[B, H, W, C_in, |G|] -> [B, H', W', C_out, |G|]``.

    Parameters: ``kernel [k, k, C_in, |G|, C_out]`` and ``bias [C_out]`` (shared over G).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 group: Group | str = "p4m", *, padding: ops.Padding = "SAME",
                 dilation: int = 1, use_bias: bool = True, kernel_init=default_kernel_init,
                 rngs: nnx.Rngs):
        order = get_group(group).order
        super().__init__(in_channels, out_channels, kernel_size, group, padding=padding,
                         dilation=dilation, use_bias=use_bias, kernel_init=kernel_init,
                         kernel_shape=(kernel_size, kernel_size, in_channels, order,
                                       out_channels),
                         rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = ops.group_conv(x, self.kernel[...], self.group, padding=self.padding,
                           dilation=self.dilation)
        return self._finish(y)


class GroupBatchNorm(nnx.Module):
    """Batch norm for ``[B, H, W, C, |G|]`` (or images) with statistics shared over G.

    In training mode (``use_running_average=False``, set by ``model.train()``) it
    normalises with the batch statistics and updates the running averages; in eval
    mode (``model.eval()``) it uses the running averages.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.9, epsilon: float = 1e-5,
                 use_running_average: bool = False, rngs: nnx.Rngs | None = None):
        self.num_features = check_positive_int(num_features, "num_features")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {momentum!r}")
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim not in (4, 5) or x.shape[3] != self.num_features:
            raise ValueError(
                f"x: expected [batch, height, width, {self.num_features}(, |G|)], got shape "
                f"{tuple(x.shape)}")
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var = norm.batch_moments(x)
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1 - m) * mean
            self.var[...] = m * self.var[...] + (1 - m) * var
        return norm.batch_norm(x, mean, var, self.scale[...], self.bias[...], self.epsilon)


class GroupPool(nnx.Module):
    """Pooling over the group axis: ``[B, H, W, C, |G|] -> [B, H, W, C]`` (max or mean)."""

    def __init__(self, kind: str = "max"):
        self.kind = check_choice(kind, "kind", ("max", "mean"))

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.orientation_pool(x, self.kind)
