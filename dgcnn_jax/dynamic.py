"""Dynamic group convolution (functional core).

A dynamic layer holds ``K`` kernel banks ``W_k`` and biases ``b_k`` and mixes them per
input with attention weights ``pi(x)`` (Chen et al. 2020, made group-equivariant):

* **invariant attention** (default): ``pi(x) = softmax(MLP(d(x)) / tau)`` with the
  descriptor ``d(x)`` = mean of ``x`` over the spatial AND group axes ``[B, C_in]``.
  ``d(L_g x) = d(x)`` exactly (the mean over a set that ``L_g`` permutes), so the
  weights are invariant, the per-example kernel ``W(x) = sum_k pi_k(x) W_k`` is the same
  for ``x`` and ``L_g x``, and ``y = x * W(x) + b(x)`` inherits the exact equivariance of
  the static convolution: ``y(L_g x) = L_g x * W(x) = L_g (x * W(x)) = L_g y(x)``.
* **equivariant attention**: one weight per kernel AND output group element,
  ``pi_k(x, g)`` with ``pi(L_h x, g) = pi(x, h^-1 g)``: the descriptor is the spatial
  mean of a group feature map (of ``x`` itself, or of a small lifting convolution for
  image inputs), which transforms by permuting the group axis; it passes through
  1x1 group convolutions (equivariant maps on the group axis) and a softmax over ``K``
  per ``g``. The output ``y(u, g) = sum_k pi_k(x, g) (x * W_k + b_k)(u, g)`` is then
  equivariant. This needs all ``K`` responses: ``K`` times the convolution FLOPs.

Shapes: images ``[B, H, W, C]``, group feature maps ``[B, H, W, C, |G|]``; lifting
kernels ``[K, k, k, C_in, C_out]``, group kernels ``[K, k, k, C_in, |G|, C_out]``,
biases ``[K, C_out]``; invariant weights ``[B, K]``, equivariant weights ``[B, K, |G|]``.

**Omni-dimensional attention** (:func:`omni_attention`, :func:`omni_conv`; ODConv of Li
et al. 2022): invariant sigmoid attention over the base kernel's positions, input fields
and output fields besides the banks (softmax or signed, L1-normalised mixing), applied to
the base kernel before its filter bank is built, so the layer stays exactly equivariant;
``K = 1`` with attention over positions or fields is a valid layer.

How the convolutions run (grouped, per example, batched matmul, or the K responses
mixed by linearity) is the ``impl`` argument, one vocabulary with the static layers:
see :mod:`dgcnn_jax.execution`. This module holds the attention and the mixing maths.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import execution, ops
from ._checks import check_choice, check_feature_map, check_image, shape_of
from .filters import group_filter_bank, lifting_filter_bank
from .groups import Group, get_group

__all__ = [
    "ATTENTION_MODES",
    "DESCRIPTORS",
    "attention_hidden",
    "attention_param_shapes",
    "check_temperature",
    "invariant_descriptor",
    "invariant_attention",
    "equivariant_attention",
    "aggregate",
    "dynamic_conv",
    "dynamic_conv_equivariant",
    "linear_temperature",
    "attention_entropy",
    "attention_spread",
    "bank_common_share",
    "TARGETS",
    "BANK_MIXES",
    "ASSIGNMENT_LOGIT",
    "omni_param_shapes",
    "omni_attention",
    "bank_assignment",
    "modulated_kernels",
    "omni_conv",
]

ATTENTION_MODES = ("invariant", "equivariant")
DESCRIPTORS = {"mean": ("mean",), "mean_max": ("mean", "max"), "mean_std": ("mean", "std")}
"""Invariant descriptors of the attention: per channel, the statistics over the spatial
and group axes that are concatenated (each exactly invariant: a statistic of a set that
``L_g`` permutes)."""


def attention_hidden(in_channels: int, reduction: float, min_hidden: int) -> int:
    """Hidden width of the attention branch: ``max(min_hidden, round(in_channels * reduction))``."""
    if not reduction > 0:
        raise ValueError(f"reduction: expected a ratio > 0, got {reduction!r}")
    return max(min_hidden, int(round(in_channels * reduction)))


def attention_param_shapes(mode: str, in_channels: int, hidden: int, num_kernels: int,
                           kernel_size: int, group: Group | str, *, lifting: bool,
                           descriptor: str = "mean") -> dict[str, tuple[int, ...]]:
    """Shapes of the attention parameters ``w1, b1, w2, b2`` that
    :func:`invariant_attention` (``mode="invariant"``, with ``descriptor``) or
    :func:`equivariant_attention` (``"equivariant"``) take, for a lifting (image input)
    or group layer."""
    check_choice(mode, "attention", ATTENTION_MODES)
    check_choice(descriptor, "descriptor", tuple(DESCRIPTORS))
    order = get_group(group).order
    k, cin, hid, nk = kernel_size, in_channels, hidden, num_kernels
    if mode == "invariant":
        w1, w2 = (cin * len(DESCRIPTORS[descriptor]), hid), (hid, nk)
    else:
        w1 = (k, k, cin, hid) if lifting else (1, 1, cin, order, hid)
        w2 = (1, 1, hid, order, nk)
    return {"w1": w1, "b1": (hid,), "w2": w2, "b2": (nk,)}


def check_temperature(tau):
    """The temperature to divide by: ``ValueError`` for a concrete ``tau <= 0`` or NaN.

    A traced ``tau`` (under ``jax.jit``) cannot raise from compiled code: a value that is not
    ``> 0`` becomes NaN, so the attention weights and every output that uses them are NaN,
    never a finite but wrong mixture (a negative tau would silently invert the softmax).
    """
    if isinstance(tau, jax.core.Tracer):
        return jnp.where(tau > 0, tau, jnp.nan)
    if not np.all(np.asarray(tau) > 0):
        raise ValueError(f"tau: the attention temperature must be > 0, got {tau!r}")
    return tau


def invariant_descriptor(x: jax.Array, kind: str = "mean", *, ordered: bool = False
                         ) -> jax.Array:
    """Statistics over the spatial and group axes (invariant): ``[B, H, W, C(, |G|)] ->
    [B, C * n]`` for the ``n`` statistics of ``DESCRIPTORS[kind]`` (``"mean"``: the mean;
    ``"mean_max"``: mean and max; ``"mean_std"``: mean and standard deviation).

    ``ordered``: reduce each channel's values in sorted order. A transformed input holds
    the same values in another order, so the statistics are then equal bit for bit, not
    only to rounding (the orbit execution's exactness needs it)."""
    check_choice(kind, "descriptor", tuple(DESCRIPTORS))
    shape = shape_of(x)
    if len(shape) not in (4, 5):
        raise ValueError(f"x: expected [batch, height, width, channels] or [batch, height, "
                         f"width, channels, |G|], got shape {shape}")
    if ordered:  # [B, C, n]: each channel's values, sorted
        x = jnp.sort(jnp.moveaxis(x, 3, 1).reshape(x.shape[0], x.shape[3], -1), axis=-1)
        axes = (2,)
    else:
        axes = tuple(a for a in range(1, x.ndim) if a != 3)  # all but batch and channels
    parts = []
    for stat in DESCRIPTORS[kind]:
        if stat == "mean":
            parts.append(jnp.mean(x, axis=axes))
        elif stat == "max":
            parts.append(jnp.max(x, axis=axes))
        else:  # std, with a floor that keeps its gradient finite for constant inputs
            parts.append(jnp.sqrt(jnp.var(x, axis=axes) + 1e-6))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def invariant_attention(x: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array,
                        b2: jax.Array, tau, descriptor: str = "mean", *,
                        precision: str | jax.lax.Precision | None = execution.DEFAULT_PRECISION,
                        ordered: bool = False) -> jax.Array:
    """Invariant mixing weights ``softmax(Dense(ReLU(Dense(d(x)))) / tau)``: ``[B, K]``.

    Args:
      x: images ``[B, H, W, C]`` or group feature maps ``[B, H, W, C, |G|]``.
      w1, b1: ``[C * n, hidden]`` (``n`` statistics of the descriptor), ``[hidden]``;
        w2, b2: ``[hidden, K]``, ``[K]``.
      tau: temperature (> 0), a traced scalar is fine.
      descriptor: a key of :data:`DESCRIPTORS`.
      precision: of the two matrix products (:data:`dgcnn_jax.execution.PRECISIONS`).
      ordered: the descriptor reduced in sorted order (:func:`invariant_descriptor`).
    """
    tau = check_temperature(tau)
    precision = execution.as_precision(precision)
    d = invariant_descriptor(x, descriptor, ordered=ordered)
    if shape_of(w1)[0] != d.shape[-1]:
        raise ValueError(f"w1: expected shape [{d.shape[-1]}, hidden], got {shape_of(w1)}")
    h = jax.nn.relu(jnp.matmul(d, w1, precision=precision) + b1)
    z = jnp.matmul(h, w2, precision=precision) + b2
    return jax.nn.softmax(z / tau, axis=-1)


def equivariant_attention(x: jax.Array, a1: jax.Array, b1: jax.Array, a2: jax.Array,
                          b2: jax.Array, tau, group: Group | str, *,
                          padding: ops.Padding = "SAME",
                          precision: str | jax.lax.Precision | None = execution.DEFAULT_PRECISION) -> jax.Array:
    """Equivariant mixing weights ``pi_k(x, g)``: ``[B, K, |G|]``, softmax over ``K``.

    ``pi(L_h x, g) = pi(x, h^-1 g)``.

    Args:
      x: images ``[B, H, W, C]`` (then ``a1`` is a lifting kernel ``[k, k, C, hidden]``)
        or group feature maps ``[B, H, W, C, |G|]`` (then ``a1`` is ``[1, 1, C, |G|,
        hidden]``, applied to the spatial mean).
      b1: ``[hidden]``; a2: ``[1, 1, hidden, |G|, K]``; b2: ``[K]``.
      tau: temperature (> 0).
      precision: of the convolutions (:data:`dgcnn_jax.execution.PRECISIONS`).
    """
    group = get_group(group)
    tau = check_temperature(tau)
    if x.ndim == 4:
        h = ops.lifting_conv(x, a1, group, padding=padding, precision=precision)
        d = jnp.mean(h, axis=(1, 2), keepdims=True)  # [B, 1, 1, hidden, G]
    else:
        d = jnp.mean(x, axis=(1, 2), keepdims=True)  # [B, 1, 1, C, G]
        d = ops.group_conv(d, a1, group, padding="VALID", precision=precision)
    d = jax.nn.relu(ops.add_bias(d, b1))
    z = ops.group_conv(d, a2, group, padding="VALID", precision=precision)
    z = ops.add_bias(z, b2)[:, 0, 0]  # [B, K, G]
    return jax.nn.softmax(z / tau, axis=1)


def aggregate(params: jax.Array, weights: jax.Array, *,
              precision: str | jax.lax.Precision | None = execution.DEFAULT_PRECISION) -> jax.Array:
    """Per-example mixture ``sum_k weights[b, k] params[k]`` built with ``vmap``.

    ``params`` is ``[K, ...]`` and ``weights`` ``[B, K]``; returns ``[B, ...]``.
    """
    precision = execution.as_precision(precision)
    return jax.vmap(lambda w: jnp.tensordot(w, params, axes=1, precision=precision))(weights)


def _bank_matrix(kernel, group, lifting):
    """HWIO matrix ``[k, k, C_in * |G_in|, C_out * |G|]`` of one kernel's filter bank."""
    bank = lifting_filter_bank(kernel, group) if lifting else group_filter_bank(kernel, group)
    k = bank.shape[0]
    cin = kernel.shape[2] * (1 if lifting else group.order)
    return bank.reshape(k, k, cin, -1)


def _check_dynamic_inputs(x, kernels, biases, group):
    kshape = shape_of(kernels)
    if len(kshape) == 5:
        lifting = True
        check_image(x, "x", channels=kshape[3])
        cout = kshape[4]
    elif len(kshape) == 6:
        lifting = False
        if kshape[4] != group.order:
            raise ValueError(
                f"kernels: expected [K, k, k, in_channels, {group.order}, out_channels], got "
                f"{kshape}")
        check_feature_map(x, group, "x", channels=kshape[3])
        cout = kshape[5]
    else:
        raise ValueError(
            f"kernels: expected [K, k, k, in_channels, out_channels] (lifting) or [K, k, k, "
            f"in_channels, {group.order}, out_channels] (group), got {kshape}")
    if biases is not None and shape_of(biases) != (kshape[0], cout):
        raise ValueError(f"biases: expected shape ({kshape[0]}, {cout}), got {shape_of(biases)}")
    return lifting, kshape


def _check_base(base_kernel, base_bias, kshape, cout):
    """The residual form's static kernel ``[k, k, ...]`` and bias ``[C_out]``."""
    if base_kernel is None:
        if base_bias is not None:
            raise ValueError("base_bias: given without base_kernel (the residual form needs "
                             "both, or only base_kernel)")
        return
    if shape_of(base_kernel) != tuple(kshape[1:]):
        raise ValueError(f"base_kernel: expected shape {tuple(kshape[1:])} (one kernel of the "
                         f"K banks' shape), got {shape_of(base_kernel)}")
    if base_bias is not None and shape_of(base_bias) != (cout,):
        raise ValueError(f"base_bias: expected shape ({cout},), got {shape_of(base_bias)}")


def _k_responses(xf, banks, group, pad, dilation, precision):
    """All K responses ``[B, H', W', K, C_out, |G|]``: one convolution K times as wide.

    ``xf`` is ``[B, H, W, C_in * |G_in|]``, ``banks`` ``[K, k, k, C_in * |G_in|, C_out * |G|]``.
    """
    k, cin = banks.shape[1], banks.shape[3]
    wide = jnp.moveaxis(banks, 0, 3).reshape(k, k, cin, -1)  # [k, k, cin, K * cout * G]
    y = execution.conv2d(xf, wide, pad, dilation, precision)
    return y.reshape(*y.shape[:3], banks.shape[0], -1, group.order)


def _orbit_each(x, base_kernels, group, pad, dilation, precision):
    """``impl="orbit"``: each example's orbit correlation (:func:`dgcnn_jax.ops.lifting_conv`,
    :func:`dgcnn_jax.ops.group_conv`) with its own base kernel ``[B, k, k, ...]``, one
    example at a time, through the custom-VJP convolution path (``"fast"``: measured 10x
    faster forward + backward than XLA's here, a p4m layer of 8 fields at 14 px on the CPU).
    Returns ``[B, H', W', C_out, |G|]``."""
    return jax.lax.map(lambda a: ops._orbit(a[0][None], a[1], group, pad, dilation,
                                            precision, "fast")[0], (x, base_kernels))


def _flat(x):
    b, h, w = x.shape[:3]
    return x.reshape(b, h, w, -1)


def dynamic_conv(
    x: jax.Array,
    kernels: jax.Array,
    biases: jax.Array | None,
    weights: jax.Array,
    group: Group | str,
    *,
    padding: ops.Padding = "SAME",
    dilation: int = 1,
    impl: str | None = "auto",
    precision: str | jax.lax.Precision | None = execution.DEFAULT_PRECISION,
    base_kernel: jax.Array | None = None,
    base_bias: jax.Array | None = None,
) -> jax.Array:
    """Dynamic lifting or group convolution with invariant weights ``[B, K]``.

    ``y_b = x_b * (sum_k w_bk W_k) + sum_k w_bk b_k``. Lifting when ``kernels`` is
    ``[K, k, k, C_in, C_out]`` (``x`` images), group convolution when it is
    ``[K, k, k, C_in, |G|, C_out]`` (``x`` group feature maps). ``impl``: a dynamic
    entry of :data:`dgcnn_jax.execution.IMPLS` (``"orbit"``: each example's mixed kernel
    through :func:`dgcnn_jax.ops.group_conv`'s orbit execution, equivariant bit for bit
    for given weights). Returns ``[B, H', W', C_out, |G|]``.

    Residual form: with ``base_kernel`` ``W_0`` (and ``base_bias`` ``b_0``), ``kernels``
    and ``biases`` are the per-bank changes and the mixed kernel is ``W_0 + sum_k w_bk
    W_k`` (bias ``b_0 + sum_k w_bk b_k``): with zero changes the layer is the static
    convolution with ``W_0``, whatever the weights.
    """
    group = get_group(group)
    impl = execution.resolve(impl, "dynamic")
    precision = execution.as_precision(precision)
    lifting, kshape = _check_dynamic_inputs(x, kernels, biases, group)
    num_k, k = kshape[0], kshape[1]
    if shape_of(weights) != (x.shape[0], num_k):
        raise ValueError(
            f"weights: expected invariant weights of shape ({x.shape[0]}, {num_k}) "
            f"[batch, K], got {shape_of(weights)}")
    pad = ops.conv_padding(padding, k, dilation)
    cout = kshape[-1]
    _check_base(base_kernel, base_bias, kshape, cout)
    if impl == "orbit":  # the mixed base kernel of each example, then its orbit
        mixed = aggregate(kernels, weights, precision=precision)
        y = _orbit_each(x, mixed if base_kernel is None else base_kernel[None] + mixed, group,
                        pad, dilation, precision)
        return _dynamic_bias(y, weights, biases, base_bias, precision)
    xf = _flat(x)
    banks = jax.vmap(lambda kern: _bank_matrix(kern, group, lifting))(kernels)
    base = None if base_kernel is None else _bank_matrix(base_kernel, group, lifting)
    if impl == "linear":
        mix = weights
        if base is not None:  # the static kernel as one more response, weight 1
            banks = jnp.concatenate([base[None], banks])
            mix = jnp.concatenate([jnp.ones_like(weights[:, :1]), weights], axis=1)
        y = _k_responses(xf, banks, group, pad, dilation, precision)
        y = jnp.einsum("bhwkog,bk->bhwog", y, mix, precision=precision)
    else:
        # T(g) is linear, so mixing the K banks equals the bank of the mixed kernel.
        mats = aggregate(banks, weights, precision=precision)  # [B, k, k, cin, cout * G]
        if base is not None:
            mats = base[None] + mats
        y = execution.per_example_conv(xf, mats, pad, dilation, precision, impl)
        y = y.reshape(*y.shape[:3], cout, group.order)
    return _dynamic_bias(y, weights, biases, base_bias, precision)


def _dynamic_bias(y, weights, biases, base_bias, precision):
    """``y`` plus the mixed bias ``weights @ biases`` (and the residual form's ``base_bias``)."""
    if biases is not None:
        y = y + jnp.matmul(weights, biases, precision=precision)[:, None, None, :, None].astype(
            y.dtype)
    if base_bias is not None:
        y = y + base_bias[:, None].astype(y.dtype)
    return y


def dynamic_conv_equivariant(
    x: jax.Array,
    kernels: jax.Array,
    biases: jax.Array | None,
    weights: jax.Array,
    group: Group | str,
    *,
    padding: ops.Padding = "SAME",
    dilation: int = 1,
    impl: str | None = "auto",
    precision: str | jax.lax.Precision | None = execution.DEFAULT_PRECISION,
    base_kernel: jax.Array | None = None,
    base_bias: jax.Array | None = None,
) -> jax.Array:
    """Dynamic convolution with equivariant weights ``[B, K, |G|]``.

    ``y(u, g) = sum_k weights[k, g] (x * W_k + b_k)(u, g)``: all ``K`` responses are
    computed (one convolution ``K`` times as wide), then mixed per group element;
    ``impl`` can only be ``"auto"`` or ``"linear"``. Residual form (``base_kernel``,
    ``base_bias``): ``y = x * W_0 + b_0 + sum_k weights[k, g] (x * W_k + b_k)``.
    """
    group = get_group(group)
    execution.resolve(impl, "equivariant")
    precision = execution.as_precision(precision)
    lifting, kshape = _check_dynamic_inputs(x, kernels, biases, group)
    num_k, k = kshape[0], kshape[1]
    if shape_of(weights) != (x.shape[0], num_k, group.order):
        raise ValueError(
            f"weights: expected equivariant weights of shape ({x.shape[0]}, {num_k}, "
            f"{group.order}) [batch, K, |G|], got {shape_of(weights)}")
    pad = ops.conv_padding(padding, k, dilation)
    _check_base(base_kernel, base_bias, kshape, kshape[-1])
    banks = jax.vmap(lambda kern: _bank_matrix(kern, group, lifting))(kernels)
    if base_kernel is not None:  # the static response rides along as bank 0
        banks = jnp.concatenate([_bank_matrix(base_kernel, group, lifting)[None], banks])
    y = _k_responses(_flat(x), banks, group, pad, dilation, precision)
    if base_kernel is not None:
        y0, y = y[:, :, :, 0], y[:, :, :, 1:]
        if base_bias is not None:
            y0 = y0 + base_bias[:, None].astype(y.dtype)
    if biases is not None:
        y = y + biases[:, :, None].astype(y.dtype)
    out = jnp.einsum("bhwkog,bkg->bhwog", y, weights, precision=precision)
    return out if base_kernel is None else y0 + out


def linear_temperature(epoch, *, initial: float = 30.0, final: float = 1.0,
                       anneal_epochs: float = 10.0):
    """Attention temperature: linear from ``initial`` to ``final`` over the first
    ``anneal_epochs`` epochs, then ``final`` (Chen et al. 2020). ``epoch`` may be
    fractional or a jax scalar."""
    if initial <= 0 or final <= 0:
        raise ValueError(f"initial, final: temperatures must be > 0, got {initial}, {final}")
    if anneal_epochs < 0:
        raise ValueError(f"anneal_epochs: expected >= 0, got {anneal_epochs}")
    if anneal_epochs == 0:
        return jnp.asarray(final, jnp.float32) + 0.0 * jnp.asarray(epoch, jnp.float32)
    frac = jnp.clip(jnp.asarray(epoch, jnp.float32) / anneal_epochs, 0.0, 1.0)
    return initial + (final - initial) * frac


def attention_entropy(weights: jax.Array) -> jax.Array:
    """Mean entropy (nats) of mixing weights ``[B, K]`` or ``[B, K, |G|]`` over ``K``:
    ``log K`` for uniform weights, 0 for one-hot ones. Signed weights (``bank_mix=
    "signed"``) count by their share of the magnitude, ``|w_k| / sum_j |w_j|``; softmax
    weights are their own shares."""
    w = jnp.abs(jnp.asarray(weights))
    w = w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1e-30)
    return jnp.mean(-jnp.sum(w * jnp.log(jnp.maximum(w, 1e-30)), axis=1))


def attention_spread(weights: jax.Array) -> jax.Array:
    """How much the weights depend on the input: the standard deviation over examples of
    each weight (per kernel, and group element for equivariant weights), averaged."""
    return jnp.mean(jnp.std(jnp.asarray(weights), axis=0))


def bank_common_share(banks: jax.Array, initial: jax.Array) -> jax.Array:
    """Fraction of the learned change of K banks ``[K, ...]`` that is common to all.

    With ``D_k = banks[k] - initial[k]`` and their mean ``D``: ``K |D|^2 / sum_k |D_k|^2``
    (1: every bank moved the same way, they do not specialise; near ``1/K``: their changes
    are unrelated). NaN before any change.
    """
    d = (jnp.asarray(banks) - jnp.asarray(initial)).reshape(banks.shape[0], -1)
    total = jnp.sum(d * d)
    common = d.shape[0] * jnp.sum(jnp.mean(d, axis=0) ** 2)
    return jnp.where(total > 0, common / jnp.where(total > 0, total, 1.0), jnp.nan)


# Omni-dimensional attention (attention over positions and fields as well as banks)
from ._omni import (  # noqa: E402  (its functions use this module's helpers)
    ASSIGNMENT_LOGIT,
    BANK_MIXES,
    TARGETS,
    bank_assignment,
    modulated_kernels,
    omni_attention,
    omni_conv,
    omni_param_shapes,
)
