"""Input validation shared by the functional core (private)."""

from __future__ import annotations

import numbers

import jax.numpy as jnp
import numpy as np

from .groups import Group


def shape_of(x) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    if shape is None:
        raise ValueError(f"expected an array, got {type(x).__name__}")
    return tuple(shape)


def check_image(x, name: str = "x", channels: int | None = None) -> tuple[int, ...]:
    """Check an NHWC image batch ``[batch, height, width, channels]``."""
    shape = shape_of(x)
    want_c = "channels" if channels is None else str(channels)
    if len(shape) != 4:
        raise ValueError(
            f"{name}: expected an image batch of shape [batch, height, width, {want_c}] "
            f"(rank 4), got shape {shape} (rank {len(shape)})")
    if channels is not None and shape[-1] != channels:
        raise ValueError(
            f"{name}: expected {channels} channels, shape [batch, height, width, {channels}], "
            f"got shape {shape}")
    _check_batch_and_dtype(x, name, shape)
    return shape


def check_feature_map(x, group: Group, name: str = "x",
                      channels: int | None = None) -> tuple[int, ...]:
    """Check a group feature map ``[batch, height, width, channels, |G|]``."""
    shape = shape_of(x)
    want_c = "channels" if channels is None else str(channels)
    expected = f"[batch, height, width, {want_c}, {group.order}]"
    if len(shape) != 5:
        raise ValueError(
            f"{name}: expected a {group.name} feature map of shape {expected} (rank 5), "
            f"got shape {shape} (rank {len(shape)})")
    if shape[-1] != group.order:
        raise ValueError(
            f"{name}: group axis (last) has size {shape[-1]}, expected {group.order} for "
            f"{group.name}: shape {expected}, got {shape}")
    if channels is not None and shape[-2] != channels:
        raise ValueError(
            f"{name}: expected {channels} channels, shape {expected}, got shape {shape}")
    _check_batch_and_dtype(x, name, shape)
    return shape


def _check_batch_and_dtype(x, name: str, shape: tuple[int, ...]) -> None:
    if shape[0] < 1:
        raise ValueError(f"{name}: the batch is empty (shape {shape}); pass at least one example")
    dtype = getattr(x, "dtype", None)
    # JAX's notion of floating types: bfloat16 is one, although numpy's is not
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name}: expected a floating-point array, got dtype {dtype} (scale "
                         f"integer images to float first, e.g. x.astype('float32') / 255)")


def check_positive_int(value, name: str) -> int:
    """``value`` as an ``int`` if it is a positive integer (numpy integers too, not bools)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
