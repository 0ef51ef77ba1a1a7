"""Batch normalisation that keeps equivariance (functional core).

Statistics are per field (channel) and shared over batch, space and the group axis,
so every group element sees the same affine map and ``L_g`` commutes with it.

:func:`apply_batch_norm` is the whole layer as a pure function: it returns the output
and the updated running statistics, which :class:`dgcnn_jax.GroupBatchNorm` only stores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._checks import shape_of

__all__ = ["batch_moments", "batch_norm", "apply_batch_norm"]


def _channel_axis(x) -> int:
    if len(shape_of(x)) in (4, 5):
        return 3  # channels sit at axis 3 in both layouts
    raise ValueError(
        f"x: expected [batch, height, width, channels] or [batch, height, width, channels, "
        f"|G|], got shape {shape_of(x)}")


def batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and (biased) variance over every axis but the channel axis.

    ``x`` is ``[B, H, W, C]`` or ``[B, H, W, C, |G|]``; returns two ``[C]`` arrays.
    """
    axis = _channel_axis(x)
    axes = tuple(a for a in range(x.ndim) if a != axis)
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - jnp.expand_dims(mean, axes)), axis=axes)
    return mean, var


def batch_norm(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array | None,
               bias: jax.Array | None, epsilon: float = 1e-5) -> jax.Array:
    """Normalise ``x`` with per-channel ``mean``/``var`` ``[C]`` and an affine map."""
    axis = _channel_axis(x)
    c = x.shape[axis]
    for name, v in (("mean", mean), ("var", var), ("scale", scale), ("bias", bias)):
        if v is not None and shape_of(v) != (c,):
            raise ValueError(f"{name}: expected shape ({c},), got {shape_of(v)}")
    tail = (1,) * (x.ndim - 1 - axis)
    mul = jax.lax.rsqrt(var + epsilon)
    if scale is not None:
        mul = mul * scale
    shift = -mean * mul
    if bias is not None:
        shift = shift + bias
    return x * mul.reshape(c, *tail) + shift.reshape(c, *tail)


def apply_batch_norm(x: jax.Array, running_mean: jax.Array, running_var: jax.Array,
                     scale: jax.Array | None, bias: jax.Array | None, *,
                     use_running_average: bool, momentum: float = 0.9,
                     epsilon: float = 1e-5) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batch norm of ``x`` with running statistics: ``(y, new_running_mean, new_running_var)``.

    Training (``use_running_average=False``): normalise with the batch moments and
    update the running ones, ``running = momentum * running + (1 - momentum) * batch``.
    Evaluation: normalise with the running moments, returned unchanged.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum: expected a value in [0, 1), got {momentum!r}")
    if use_running_average:
        mean, var = running_mean, running_var
    else:
        mean, var = batch_moments(x)
        running_mean = momentum * running_mean + (1 - momentum) * mean
        running_var = momentum * running_var + (1 - momentum) * var
    return batch_norm(x, mean, var, scale, bias, epsilon), running_mean, running_var
