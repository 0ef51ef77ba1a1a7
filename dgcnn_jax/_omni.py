"""Omni-dimensional invariant attention (ODConv, Li et al. 2022, made group-equivariant).

Besides the mixture of ``K`` banks, attention over the base kernel's spatial positions
(``k x k``), its input fields and its output fields, all from one invariant descriptor
of the input. Each attention acts on the **base kernel** before its filter bank is
built, and is an invariant function of ``x``, so the per-example kernel

    W(x) = (sum_k pi_k(x) W_k) * a_pos(x)[u, v] * a_in(x)[c] * a_out(x)[o]

is the same for ``x`` and ``L_g x``, and the layer keeps the exact equivariance of the
static convolution with that kernel: ``y(L_g x) = L_g y(x)``. ``K = 1`` with attention
over positions or fields is a valid layer (ODConv's single-kernel form).

Banks are mixed by ``"softmax"`` (``softmax(z / tau)``) or ``"signed"`` (``z / sum_k
|z_k|``: weights that may be negative, L1-normalised, as KernelWarehouse mixes); the other
attentions are sigmoids. Shapes: kernels ``[K, k, k, C_in, C_out]`` (lifting) or ``[K,
k, k, C_in, |G|, C_out]`` (group); attention ``{"banks": [B, K], "positions": [B, k,
k], "in_fields": [B, C_in], "out_fields": [B, C_out]}`` (the targets asked for).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import execution, ops
from ._checks import check_choice, shape_of
from .groups import Group, get_group

__all__ = ["TARGETS", "BANK_MIXES", "ASSIGNMENT_LOGIT", "omni_param_shapes",
           "omni_attention", "bank_assignment", "modulated_kernels", "omni_conv"]

TARGETS = ("banks", "field_banks", "positions", "in_fields", "out_fields")
"""What the invariant attention may act on: the K banks as a whole (``[B, K]``), or per
output field (``field_banks``, ``[B, K, C_out]``: each output field mixes the banks'
kernels of that field with its own weights), kernel positions, input and output fields."""
ASSIGNMENT_LOGIT = 4.0
"""The bank logit of a field's assigned bank in the assignment start (see
:func:`bank_assignment`)."""
BANK_MIXES = ("softmax", "signed")
"""How the bank weights are normalised."""


def _check_targets(targets) -> tuple[str, ...]:
    targets = tuple(targets)
    if not targets or len(set(targets)) != len(targets):
        raise ValueError(f"targets: expected distinct names from {', '.join(TARGETS)}, got "
                         f"{targets!r}")
    for t in targets:
        check_choice(t, "targets", TARGETS)
    if "banks" in targets and "field_banks" in targets:
        raise ValueError("targets: 'banks' and 'field_banks' are two ways to mix the banks; "
                         "name one")
    return tuple(t for t in TARGETS if t in targets)  # one order everywhere


def _sizes(targets, num_kernels, kernel_size, in_channels, out_channels) -> dict[str, int]:
    sizes = {"banks": num_kernels, "field_banks": num_kernels * out_channels,
             "positions": kernel_size * kernel_size,
             "in_fields": in_channels, "out_fields": out_channels}
    return {t: sizes[t] for t in _check_targets(targets)}


def omni_param_shapes(targets, descriptor_size: int, hidden: int, num_kernels: int,
                      kernel_size: int, in_channels: int, out_channels: int
                      ) -> dict[str, tuple[int, ...]]:
    """Shapes of the parameters :func:`omni_attention` takes: the shared first layer
    ``w1 [descriptor_size, hidden]``, ``b1 [hidden]``, and one head per target,
    ``w_<target> [hidden, n]``, ``b_<target> [n]``."""
    shapes = {"w1": (descriptor_size, hidden), "b1": (hidden,)}
    for target, n in _sizes(targets, num_kernels, kernel_size, in_channels,
                            out_channels).items():
        shapes[f"w_{target}"], shapes[f"b_{target}"] = (hidden, n), (n,)
    return shapes


def omni_attention(x: jax.Array, params: dict, targets, tau, *, kernel_size: int,
                   descriptor: str = "mean", bank_mix: str = "softmax",
                   num_kernels: int | None = None,
                   precision: str | jax.lax.Precision | None = execution.DEFAULT_PRECISION,
                   ordered: bool = False) -> dict[str, jax.Array]:
    """Invariant attention over ``targets`` from the descriptor of ``x`` (images or group
    feature maps): ``{target: weights}`` with the shapes of the module docstring.
    ``tau`` (> 0) divides the bank logits of ``bank_mix="softmax"``; the banks are
    normalised over K (per output field for ``field_banks``, which needs
    ``num_kernels``). ``ordered``: the descriptor reduced in sorted order
    (:func:`dgcnn_jax.dynamic.invariant_descriptor`)."""
    from .dynamic import check_temperature, invariant_descriptor

    targets = _check_targets(targets)
    check_choice(bank_mix, "bank_mix", BANK_MIXES)
    precision = execution.as_precision(precision)
    d = invariant_descriptor(x, descriptor, ordered=ordered)
    if shape_of(params["w1"])[0] != d.shape[-1]:
        raise ValueError(f"w1: expected shape [{d.shape[-1]}, hidden], got "
                         f"{shape_of(params['w1'])}")
    h = jax.nn.relu(jnp.matmul(d, params["w1"], precision=precision) + params["b1"])
    out = {}
    for target in targets:
        z = jnp.matmul(h, params[f"w_{target}"], precision=precision) + params[f"b_{target}"]
        if target not in ("banks", "field_banks"):
            out[target] = jax.nn.sigmoid(z)
            continue
        if target == "field_banks":  # [B, K * C_out] -> [B, K, C_out]
            if num_kernels is None:
                raise ValueError("num_kernels: needed to shape the 'field_banks' weights")
            z = z.reshape(z.shape[0], num_kernels, -1)
        if bank_mix == "softmax":
            out[target] = jax.nn.softmax(z / check_temperature(tau), axis=1)
        else:
            out[target] = z / jnp.maximum(jnp.sum(jnp.abs(z), axis=1, keepdims=True), 1e-6)
    if "positions" in out:
        out["positions"] = out["positions"].reshape(-1, kernel_size, kernel_size)
    return out


def bank_assignment(num_kernels: int, out_channels: int) -> jax.Array:
    """The assignment start of ``field_banks``: bank ``o mod K`` for output field ``o``,
    one-hot ``[K, C_out]``. A layer starting from it (``bank_start="assignment"``: this
    times :data:`ASSIGNMENT_LOGIT` as the head's bias) gives different fields different
    banks from the first step, so the banks receive different gradients and can separate
    (KernelWarehouse's remedy for banks that never do under a near-uniform start); the
    learned attention moves away from it as it trains."""
    fields = jnp.arange(out_channels)
    return (fields[None, :] % num_kernels == jnp.arange(num_kernels)[:, None]).astype(
        jnp.float32)


def modulated_kernels(kernels: jax.Array, attention: dict[str, jax.Array], *,
                      precision: str | jax.lax.Precision | None = execution.DEFAULT_PRECISION
                      ) -> jax.Array:
    """The per-example base kernels ``[B, k, k, C_in, (|G|,) C_out]`` of ``kernels``
    ``[K, k, k, ...]`` under ``attention`` (a dict as :func:`omni_attention` returns)."""
    precision = execution.as_precision(precision)
    kshape = shape_of(kernels)
    if len(kshape) not in (5, 6):
        raise ValueError(f"kernels: expected [K, k, k, C_in, C_out] or [K, k, k, C_in, |G|, "
                         f"C_out], got {kshape}")
    if not attention:
        raise ValueError("attention: expected at least one of " + ", ".join(TARGETS))
    batch = next(iter(attention.values())).shape[0]
    extra = (None,) * (len(kshape) - 5)  # the group kernels' input group axis
    every = slice(None)
    if "banks" in attention:
        w = jnp.tensordot(attention["banks"], kernels, axes=1, precision=precision)
    elif "field_banks" in attention:  # each output field its own mixture
        w = jnp.einsum("bko,k...o->b...o", attention["field_banks"], kernels,
                       precision=precision)
    elif kshape[0] == 1:
        w = jnp.broadcast_to(kernels, (batch, *kshape[1:]))
    else:
        raise ValueError(f"attention: {kshape[0]} kernel banks need attention over 'banks' "
                         f"or 'field_banks' (or num_kernels=1)")
    if "positions" in attention:
        w = w * attention["positions"][(every, every, every, None, *extra, None)]
    if "in_fields" in attention:
        w = w * attention["in_fields"][(every, None, None, every, *extra, None)]
    if "out_fields" in attention:
        w = w * attention["out_fields"][(every, None, None, None, *extra, every)]
    return w


def omni_conv(x: jax.Array, kernels: jax.Array, biases: jax.Array | None,
              attention: dict[str, jax.Array], group: Group | str, *,
              padding: ops.Padding = "SAME", dilation: int = 1, impl: str | None = "auto",
              precision: str | jax.lax.Precision | None = execution.DEFAULT_PRECISION
              ) -> jax.Array:
    """Lifting or group convolution of each example with its modulated kernel
    (:func:`modulated_kernels`); the bias is the banks' mixture of ``biases [K, C_out]``
    (``biases[0]`` without bank attention). ``impl``: a per-example entry of
    :data:`dgcnn_jax.execution.IMPLS` (``"linear"`` mixes K responses and cannot apply
    attention over positions or fields). Returns ``[B, H', W', C_out, |G|]``."""
    from .dynamic import _bank_matrix, _check_dynamic_inputs, _flat, _orbit_each

    group = get_group(group)
    precision = execution.as_precision(precision)
    lifting, kshape = _check_dynamic_inputs(x, kernels, biases, group)
    for target, weights in attention.items():
        if shape_of(weights)[0] != x.shape[0]:
            raise ValueError(f"attention[{target!r}]: expected {x.shape[0]} rows (the batch), "
                             f"got shape {shape_of(weights)}")
    w = modulated_kernels(kernels, attention, precision=precision)
    pad = ops.conv_padding(padding, kshape[1], dilation)
    if execution.resolve(impl, "dynamic") == "orbit":
        y = _orbit_each(x, w, group, pad, dilation, precision)
    else:
        mats = jax.vmap(lambda kernel: _bank_matrix(kernel, group, lifting))(w)
        y = execution.per_example_conv(_flat(x), mats, pad, dilation, precision, impl)
        y = y.reshape(*y.shape[:3], kshape[-1], group.order)
    if biases is not None:
        if "banks" in attention:
            bias = jnp.matmul(attention["banks"], biases, precision=precision)
        elif "field_banks" in attention:
            bias = jnp.einsum("bko,ko->bo", attention["field_banks"], biases,
                              precision=precision)
        else:
            bias = jnp.broadcast_to(biases[0], (x.shape[0], kshape[-1]))
        y = y + bias[:, None, None, :, None].astype(y.dtype)
    return y
