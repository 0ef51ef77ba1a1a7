"""Equivariant convolutions and pooling on the pixel grid (functional core).

Shapes (one layout everywhere): images ``[B, H, W, C]`` (NHWC) and group feature maps
``[B, H, W, C, |G|]``; see :mod:`dgcnn_jax.groups` for the group convention.

Exactness on the pixel grid: a rotation by 90 degrees maps the pixel grid to itself,
so these operations are exactly equivariant when their windows are placed
symmetrically. ``padding="VALID"`` and symmetric integer padding always are;
``padding="SAME"`` is exact when the (dilated) kernel size is odd, and is refused for
even sizes (XLA pads those asymmetrically). Spatial pooling with window ``k`` and
stride ``s`` is exact when ``(size - k) % s == 0`` on both axes (for 2x2 pooling with
stride 2: even height and width); other sizes are refused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import execution
from ._checks import check_choice, check_feature_map, check_image, check_positive_int, shape_of
from .filters import group_filter_bank, lifting_filter_bank
from .groups import Group, get_group

__all__ = [
    "lifting_conv",
    "group_conv",
    "conv_padding",
    "add_bias",
    "orientation_pool",
    "spatial_pool",
    "global_pool",
]

Padding = str | int


def conv_padding(padding: Padding, kernel_size: int, dilation: int = 1) -> list[tuple[int, int]]:
    """Explicit ``[(lo, hi), (lo, hi)]`` padding that keeps the convolution exact.

    Raises ``ValueError`` for ``"SAME"`` with an even (dilated) kernel size, which
    cannot be padded symmetrically.
    """
    check_positive_int(dilation, "dilation")
    span = dilation * (kernel_size - 1) + 1
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return [(0, 0), (0, 0)]
        if mode == "SAME":
            if span % 2 == 0:
                raise ValueError(
                    f"padding: 'SAME' with an even kernel size ({kernel_size}, dilation "
                    f"{dilation}) pads asymmetrically and breaks exact equivariance; use "
                    f"'VALID', an int, or an odd kernel size")
            return [(span // 2, span // 2)] * 2
    elif isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        return [(padding, padding)] * 2
    raise ValueError(f"padding: expected 'SAME', 'VALID' or an int >= 0, got {padding!r}")




def _check_spatial(in_hw, span, padding, name="x"):
    (plo, phi), _ = padding
    out = in_hw + plo + phi - span + 1
    if out < 1:
        raise ValueError(
            f"{name}: spatial size {in_hw} is too small for a kernel spanning {span} pixels "
            f"with padding {padding[0]}")


def _orbit(x, kernel, group: Group, padding, dilation, precision,
           conv_impl: str = "auto") -> jax.Array:
    """``out(., g) = T_g[(L_g^-1 x) * kernel]`` for every ``g`` (``impl="orbit"``).

    ``x``: images ``[B, H, W, C]`` with a lifting kernel ``[k, k, C, O]``, or group
    feature maps ``[B, H, W, C, |G|]`` with a group kernel ``[k, k, C, |G|, O]``. The |G|
    moved copies go through one correlation (stacked on the batch axis;
    :func:`dgcnn_jax.execution.conv2d` with ``conv_impl``, whose every path computes each
    batch element alone) and are recomputed, not kept, for the backward pass. Returns
    ``[B, H', W', O, |G|]``."""
    b, h, w = x.shape[:3]
    lifting = x.ndim == 4

    def move(x, g):
        if lifting:
            return group.transform_image(x, g)
        return group.transform_feature_map(x, g).reshape(b, h, w, -1)

    def responses(x, kernel):
        copies = jnp.concatenate([move(x, group.invert(g)) for g in range(group.order)])
        flat = kernel.reshape(*kernel.shape[:2], -1, kernel.shape[-1])
        return execution.conv2d(copies, flat, padding, dilation, precision, conv_impl)

    z = jax.checkpoint(responses, policy=jax.checkpoint_policies.nothing_saveable)(x, kernel)
    z = z.reshape(group.order, b, *z.shape[1:])  # [G, B, H', W', O]
    return jnp.stack([group.transform_image(z[g], g) for g in range(group.order)], axis=-1)


def lifting_conv(
    x: jax.Array,
    kernel: jax.Array,
    group: Group | str,
    *,
    padding: Padding = "SAME",
    dilation: int = 1,
    precision: str | lax.Precision | None = execution.DEFAULT_PRECISION,
    impl: str | None = "auto",
) -> jax.Array:
    """Lifting convolution Z2 -> G (cross-correlation with every ``L_g kernel``).

    Args:
      x: images ``[B, H, W, C_in]``.
      kernel: ``[k, k, C_in, C_out]``.
      group: the group or its name.
      padding: ``"SAME"`` (odd kernels), ``"VALID"`` or a symmetric int.
      dilation: kernel dilation (stride is always 1).
      precision: a name of :data:`dgcnn_jax.execution.PRECISIONS` (default ``"highest"``:
        full float32 on every backend, what exact equivariance needs).
      impl: how the convolution runs, a static entry of
        :data:`dgcnn_jax.execution.IMPLS`: ``"auto"`` (default), ``"fast"``, ``"xla"``
        (the reference) or ``"orbit"`` (exactly equivariant at any precision); same
        values and gradients.

    Returns:
      ``[B, H', W', C_out, |G|]``, equivariant: ``f(L_g x) = L_g f(x)``.
    """
    group = get_group(group)
    kshape = shape_of(kernel)
    if len(kshape) != 4:
        raise ValueError(
            f"kernel: expected shape [k, k, in_channels, out_channels] (rank 4), got {kshape}")
    b, h, w, c = check_image(x, "x", channels=kshape[2])
    pad = conv_padding(padding, kshape[0], dilation)
    _check_spatial(min(h, w), dilation * (kshape[0] - 1) + 1, pad)
    if execution.resolve(impl, "static", x.size) == "orbit":
        return _orbit(x, kernel, group, pad, dilation, precision)
    bank = lifting_filter_bank(kernel, group)  # [k, k, Cin, Cout, G]
    k = bank.shape[0]
    y = execution.conv2d(x, bank.reshape(k, k, c, -1), pad, dilation, precision, impl)
    return y.reshape(*y.shape[:3], kshape[3], group.order)


def group_conv(
    x: jax.Array,
    kernel: jax.Array,
    group: Group | str,
    *,
    padding: Padding = "SAME",
    dilation: int = 1,
    precision: str | lax.Precision | None = execution.DEFAULT_PRECISION,
    impl: str | None = "auto",
) -> jax.Array:
    """Group convolution G -> G (cross-correlation with every ``T(g) kernel``).

    Args:
      x: group feature maps ``[B, H, W, C_in, |G|]``.
      kernel: ``[k, k, C_in, |G|, C_out]``.
      group: the group or its name.
      padding: ``"SAME"`` (odd kernels), ``"VALID"`` or a symmetric int.
      dilation: kernel dilation (stride is always 1).
      precision: a name of :data:`dgcnn_jax.execution.PRECISIONS` (default ``"highest"``:
        full float32 on every backend, what exact equivariance needs).
      impl: how the convolution runs, a static entry of
        :data:`dgcnn_jax.execution.IMPLS`: ``"auto"`` (default), ``"fast"``, ``"xla"``
        (the reference) or ``"orbit"`` (exactly equivariant at any precision); same
        values and gradients.

    Returns:
      ``[B, H', W', C_out, |G|]``, equivariant: ``f(L_g x) = L_g f(x)``.
    """
    group = get_group(group)
    kshape = shape_of(kernel)
    if len(kshape) != 5:
        raise ValueError(
            f"kernel: expected shape [k, k, in_channels, {group.order}, out_channels] "
            f"(rank 5), got {kshape}")
    b, h, w, c, n = check_feature_map(x, group, "x", channels=kshape[2])
    pad = conv_padding(padding, kshape[0], dilation)
    _check_spatial(min(h, w), dilation * (kshape[0] - 1) + 1, pad)
    if execution.resolve(impl, "static", x.size) == "orbit":
        return _orbit(x, kernel, group, pad, dilation, precision)
    bank = group_filter_bank(kernel, group)  # [k, k, Cin, G, Cout, G]
    k = bank.shape[0]
    y = execution.conv2d(x.reshape(b, h, w, c * n), bank.reshape(k, k, c * n, -1), pad, dilation,
                         precision, impl)
    return y.reshape(*y.shape[:3], kshape[4], group.order)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """Add a per-field bias ``[C]`` to ``[B, H, W, C, |G|]`` (shared over the group axis)."""
    if y.ndim != 5 or shape_of(bias) != (y.shape[-2],):
        raise ValueError(
            f"bias: expected shape ({y.shape[-2] if y.ndim == 5 else 'channels'},) for a "
            f"feature map [B, H, W, C, |G|] of shape {tuple(y.shape)}, got {shape_of(bias)}")
    return y + bias[:, None].astype(y.dtype)


def orientation_pool(x: jax.Array, kind: str = "max") -> jax.Array:
    """Pool over the group axis: ``[B, H, W, C, |G|] -> [B, H, W, C]``.

    The result transforms like an image: ``pool(L_g x) = L_g pool(x)`` (spatially).
    """
    check_choice(kind, "kind", ("max", "mean"))
    if x.ndim != 5:
        raise ValueError(
            f"x: expected a group feature map [batch, height, width, channels, |G|] (rank 5), "
            f"got shape {tuple(x.shape)}")
    return jnp.max(x, axis=-1) if kind == "max" else jnp.mean(x, axis=-1)


def spatial_pool(x: jax.Array, window: int = 2, stride: int | None = None,
                 kind: str = "max") -> jax.Array:
    """Spatial max or mean pooling (VALID) of images or group feature maps.

    Exactly equivariant only when the windows tile the image symmetrically,
    ``(size - window) % stride == 0`` for height and width (2x2 / stride 2: even
    sizes); other sizes raise ``ValueError``.

    Args:
      x: ``[B, H, W, C]`` or ``[B, H, W, C, |G|]``.
      window: window size; stride defaults to ``window``.
      kind: ``"max"`` or ``"mean"``.
    """
    check_choice(kind, "kind", ("max", "mean"))
    check_positive_int(window, "window")
    stride = window if stride is None else check_positive_int(stride, "stride")
    shape = shape_of(x)
    if len(shape) not in (4, 5):
        raise ValueError(
            f"x: expected [batch, height, width, channels] or [batch, height, width, "
            f"channels, |G|], got shape {shape}")
    for axis_name, size in (("height", shape[1]), ("width", shape[2])):
        if size < window or (size - window) % stride:
            raise ValueError(
                f"x: {axis_name} {size} cannot be pooled exactly with window {window} and "
                f"stride {stride}: need (size - window) % stride == 0 (e.g. an even size "
                f"for 2x2 pooling)")
    dims = (1, window, window) + (1,) * (len(shape) - 3)
    strides = (1, stride, stride) + (1,) * (len(shape) - 3)
    if kind == "max":
        # Concrete (numpy) init values let JAX use its differentiable max/sum pooling.
        init = np.array(-np.inf, x.dtype)
        return lax.reduce_window(x, init, lax.max, dims, strides, "VALID")
    summed = lax.reduce_window(x, np.array(0, x.dtype), lax.add, dims, strides, "VALID")
    return summed / (window * window)


def global_pool(x: jax.Array, kind: str = "mean") -> jax.Array:
    """Invariant global pooling for classifier heads: ``[B, H, W, C(, |G|)] -> [B, C]``.

    Pools over the spatial axes and, for group feature maps, the group axis.
    """
    check_choice(kind, "kind", ("max", "mean"))
    shape = shape_of(x)
    if len(shape) not in (4, 5):
        raise ValueError(
            f"x: expected [batch, height, width, channels] or [batch, height, width, "
            f"channels, |G|], got shape {shape}")
    axes = (1, 2) if len(shape) == 4 else (1, 2, 4)
    return jnp.max(x, axis=axes) if kind == "max" else jnp.mean(x, axis=axes)
