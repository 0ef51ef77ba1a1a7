"""How convolutions are executed: one vocabulary for static and dynamic layers.

Every convolution in the package is a stride-1 cross-correlation of NHWC inputs with
HWIO kernels, with explicit padding ``[(lo, hi), (lo, hi)]``. It can be executed in
several ways that give the same values and gradients (tested to 1e-5); the keyword
``impl`` of the ops, the dynamic ops and the layers picks one from :data:`IMPLS`:

============  =============================================  ==========================================
``impl``      static layers (one kernel for the batch)        dynamic layers (a kernel per example)
============  =============================================  ==========================================
``"xla"``     XLA's convolution and its autodiff              one grouped XLA convolution, the batch
              (the reference)                                 folded into feature groups; XLA autodiff
``"fast"``    custom VJP: filter gradient by chunked          one batch-1 XLA convolution per example
              row-patch matmuls; layers of at least 32        (``lax.map``), custom VJP: input gradient
              channels in and out run the forward pass and    per example with the rotated kernel,
              input gradient one example at a time            kernel gradient by row-patch matmuls
``"patches"`` --                                              row patches times per-example kernel
                                                              matrices: one batched matmul
``"linear"``  --                                              the K kernel responses as one K times
                                                              wider convolution, mixed by linearity
                                                              (the only one for equivariant attention)
``"orbit"``   lifting and group convolutions only            the same with each example's mixed
              (:mod:`dgcnn_jax.ops`): ``out(., g) =           base kernel, one example at a time
              T_g[(L_g^-1 x) * w]``, the |G| moved copies     (``lax.map``); no per-example form
              of the input correlated with the one base       for plain convolutions
              kernel in one XLA call; exactly equivariant
              whatever the precision (below)
``"auto"``    ``"fast"`` on the CPU for inputs of at least    ``"fast"`` on the CPU, ``"patches"``
              2**23 elements, else ``"xla"``                  elsewhere; ``"linear"`` for equivariant
                                                              attention
============  =============================================  ==========================================

:func:`resolve` is the one place that turns ``"auto"`` into a concrete choice and
refuses names that do not apply. The ``"auto"`` choices were measured on this
project's machines (docs/performance.md).

Why ``"fast"``: XLA's CPU backend computes a convolution's filter gradient several
times slower than the convolution itself (as a convolution with an image-sized
kernel), and its batched convolutions run slower per image than batch-1 ones at large
images. Its filter gradient is one matrix product of row patches and shifted output
gradients, accumulated over chunks of the batch to bound memory:

    dW[i, j, c, o] = sum_{b, y, x} xpad[b, y + i d, x + j d, c] * dy[b, y, x, o]

``rows[b, y, x', (i, c)] = xpad[b, y + i d, x', c]`` (k row shifts of the padded
input) and ``dz[b, y, x', (j, o)] = dy[b, y, x' - j d, o]`` (k column shifts of the
output gradient, zero outside) give ``dW = rows^T dz`` with the contraction over
``b, y, x'``.

Why ``"orbit"``: with a filter bank, the |G| transformed kernels meet the data in
different arrangements, and a convolution algorithm that rounds (TF32 or bfloat16 passes,
Winograd) rounds them differently, which breaks equivariance by the rounding error. With
the orbit, the copy of ``L_h x`` for element ``g`` is exactly the copy of ``x`` for
``h^-1 g`` (90-degree rotations and mirrors move data, they do not round), every copy
goes through the same arithmetic, and the outputs are equal bit for bit after the
transform back. The moved copies are recomputed for the backward pass
(``jax.checkpoint``), not kept.

Precision: every convolution and matrix product takes ``precision``, one of
:data:`PRECISIONS` (or a ``jax.lax.Precision``). The default, ``"highest"``, computes in
full float32 on every backend, which is what exact equivariance needs: GPUs otherwise
run float32 convolutions on TF32 tensor cores (10-bit mantissa), and the rounding then
depends on the orientation of the filter bank. ``"default"`` is the backend's own choice
(TF32 on recent NVIDIA GPUs, bfloat16 passes on TPUs; on the CPU all settings compute
the same).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["IMPLS", "KINDS", "Impl", "resolve", "PRECISIONS", "DEFAULT_PRECISION",
           "as_precision", "conv2d", "per_example_conv", "filter_gradient"]

PRECISIONS = {"highest": lax.Precision.HIGHEST, "high": lax.Precision.HIGH,
              "default": lax.Precision.DEFAULT}
"""Precision names: ``"highest"`` (full float32), ``"high"`` (bfloat16_3x on TPU, TF32 on
GPU), ``"default"`` (the backend's fastest)."""

DEFAULT_PRECISION = "highest"


def as_precision(precision: str | lax.Precision | None = DEFAULT_PRECISION) -> lax.Precision:
    """A ``jax.lax.Precision`` from a name of :data:`PRECISIONS` (``None``: ``"default"``)."""
    if precision is None:
        return lax.Precision.DEFAULT
    if isinstance(precision, lax.Precision):
        return precision
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got "
                         f"{precision!r}")
    return PRECISIONS[precision]


@dataclasses.dataclass(frozen=True)
class Impl:
    """One way of executing a convolution, and the layer kinds it applies to."""

    name: str
    kinds: tuple[str, ...]
    description: str


KINDS = ("static", "dynamic", "equivariant")
"""Layer kinds: ``"static"`` (one kernel for the batch), ``"dynamic"`` (invariant
attention: a mixed kernel per example) and ``"equivariant"`` (equivariant attention:
K responses mixed per group element)."""

IMPLS = {impl.name: impl for impl in (
    Impl("auto", KINDS, "the measured default for the backend and size (see resolve)"),
    Impl("xla", ("static", "dynamic"),
         "XLA's convolution and autodiff (dynamic: one grouped convolution)"),
    Impl("fast", ("static", "dynamic"),
         "XLA forward convolutions with a row-patch filter gradient (custom VJP); per "
         "example for per-example kernels and wide static layers"),
    Impl("patches", ("dynamic",), "row patches times per-example kernels, one batched matmul"),
    Impl("linear", ("dynamic", "equivariant"),
         "the K responses as one wider convolution, mixed by linearity"),
    Impl("orbit", ("static", "dynamic"),
         "lifting and group convolutions: the input moved by every group element's inverse, "
         "one correlation with the base kernel, each output moved back (exactly "
         "equivariant at any precision)"),
)}
"""Every ``impl`` name, in one table."""

# "auto", static layers: on the CPU backend the fast filter gradient wins from about
# 2**23 input elements (measured on 2 cores: 0.53-0.81x of XLA's fwd+bwd time at 8-19 M
# elements, 1.2-1.5x at 1-4 M); other backends keep XLA's own gradient.
AUTO_FAST_MIN_ELEMENTS = 1 << 23


def resolve(impl: str | None, kind: str = "static", input_size: int = 0,
            backend: str | None = None) -> str:
    """The concrete implementation that ``impl`` stands for.

    Args:
      impl: a name of :data:`IMPLS` (``None`` means ``"auto"``).
      kind: the layer kind, one of :data:`KINDS`.
      input_size: number of input elements (the static ``"auto"`` choice depends on it).
      backend: ``jax.default_backend()`` when ``None``.

    Raises ``ValueError`` naming ``impl`` for unknown names and names that do not apply
    to ``kind``.
    """
    impl = "auto" if impl is None else impl
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {', '.join(IMPLS)}, got {impl!r}")
    if kind not in IMPLS[impl].kinds:
        usable = [name for name, i in IMPLS.items() if kind in i.kinds]
        what = {"static": "a static convolution", "dynamic": "a dynamic convolution",
                "equivariant": "equivariant attention (it mixes the K responses)"}[kind]
        raise ValueError(f"impl: {impl!r} does not apply to {what}; expected one of "
                         f"{', '.join(usable)}")
    if impl != "auto":
        return impl
    backend = jax.default_backend() if backend is None else backend
    if kind == "equivariant":
        return "linear"
    if kind == "dynamic":
        return "fast" if backend == "cpu" else "patches"
    return "fast" if backend == "cpu" and input_size >= AUTO_FAST_MIN_ELEMENTS else "xla"


_DIMS = ("NHWC", "HWIO", "NHWC")
_CHUNK_ELEMENTS = 1 << 24  # about 64 MiB of float32 row patches per chunk


def _xla_conv(x, w, padding, dilation, precision):
    return lax.conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=(dilation, dilation),
                                    dimension_numbers=_DIMS, precision=precision)


def filter_gradient(x, dy, kernel_size: int, padding, dilation: int = 1,
                    precision: str | lax.Precision | None = DEFAULT_PRECISION):
    """``dW [k, k, C, O]`` of a stride-1 cross-correlation, by chunked row-patch matmuls."""
    precision = as_precision(precision)
    (plo, phi), (qlo, qhi) = padding
    b, h, w, c = x.shape
    oh, ow, o = dy.shape[1:]
    k, d = kernel_size, dilation
    wp = w + qlo + qhi
    per_example = oh * wp * k * c
    chunk = max(1, min(b, _CHUNK_ELEMENTS // max(per_example, 1)))
    while b % chunk:
        chunk -= 1
    xp = jnp.pad(x, ((0, 0), (plo, phi), (qlo, qhi), (0, 0)))

    def one(xc, dyc):
        rows = jnp.concatenate([xc[:, i * d:i * d + oh] for i in range(k)], axis=-1)
        dz = jnp.concatenate(
            [jnp.pad(dyc, ((0, 0), (0, 0), (j * d, wp - ow - j * d), (0, 0)))
             for j in range(k)], axis=-1)
        return jnp.einsum("bhwp,bhwq->pq", rows, dz, precision=precision,
                          preferred_element_type=jnp.float32)

    if chunk == b:
        total = one(xp, dy)
    else:
        xs = xp.reshape(b // chunk, chunk, *xp.shape[1:])
        dys = dy.reshape(b // chunk, chunk, *dy.shape[1:])
        total = lax.fori_loop(0, b // chunk, lambda n, acc: acc + one(xs[n], dys[n]),
                              jnp.zeros((k * c, k * o), jnp.float32))
    # total[(i, c), (j, o)] -> dW[i, j, c, o]
    return total.reshape(k, c, k, o).transpose(0, 2, 1, 3).astype(x.dtype)


def _transpose_padding(padding, kernel_size: int, dilation: int):
    """Padding of the convolution that gives a stride-1 convolution's input gradient."""
    span = dilation * (kernel_size - 1) + 1
    return tuple((span - 1 - lo, span - 1 - hi) for lo, hi in padding)


def _flip_kernel(w):
    """``[k, k, C, O] -> [k, k, O, C]`` rotated by 180 degrees: the input-gradient kernel."""
    return jnp.swapaxes(w[::-1, ::-1], 2, 3)


def _each(fn, *arrays):
    """``fn`` on each example (leading axis) in turn: one batch-1 XLA call per example."""
    return lax.map(lambda a: fn(*(v[None] for v in a))[0], arrays)


# Batch-1 convolutions beat XLA's batched CPU convolution by 6-10% from 64 channels in
# and out at 96x96 (measured on 2 cores), and lose by ~35% at 16 channels.
_EACH_MIN_CHANNELS = 32


def _conv_each(x, w, padding, dilation, precision):
    """``_xla_conv`` one example at a time where that is faster (wide layers)."""
    if min(w.shape[2], w.shape[3]) < _EACH_MIN_CHANNELS:
        return _xla_conv(x, w, padding, dilation, precision)
    return _each(lambda xb: _xla_conv(xb, w, padding, dilation, precision), x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _fast_conv(x, w, padding, dilation, precision):
    return _conv_each(x, w, padding, dilation, precision)


def _fast_fwd(x, w, padding, dilation, precision):
    return _fast_conv(x, w, padding, dilation, precision), (x, w)


def _fast_bwd(padding, dilation, precision, residuals, dy):
    x, w = residuals
    tpad = _transpose_padding(padding, w.shape[0], dilation)
    dx = _conv_each(dy, _flip_kernel(w), tpad, dilation, precision)
    dw = filter_gradient(x, dy, w.shape[0], padding, dilation, precision)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_fast_conv.defvjp(_fast_fwd, _fast_bwd)


def _common_dtype(x, w):
    """``x`` and ``w`` in their promoted floating type (JAX's rules: bfloat16 with float32
    gives float32), as XLA's convolution takes one dtype."""
    dtype = jnp.promote_types(x.dtype, w.dtype)
    return x.astype(dtype), w.astype(dtype)


def conv2d(x, w, padding, dilation: int = 1,
           precision: str | lax.Precision | None = DEFAULT_PRECISION,
           impl: str | None = "auto"):
    """Stride-1 cross-correlation of ``x [B, H, W, C]`` with ``w [k, k, C, O]``.

    ``padding`` is explicit ``[(lo, hi), (lo, hi)]``; ``impl`` is a static entry of
    :data:`IMPLS` (``"auto"``, ``"fast"`` or ``"xla"``); all give the same values and
    gradients. ``precision``: see :data:`PRECISIONS`. Returns ``[B, H', W', O]``.
    """
    impl = resolve(impl, "static", x.size)
    if impl == "orbit":
        raise ValueError("impl: 'orbit' executes lifting and group convolutions "
                         "(dgcnn_jax.lifting_conv, dgcnn_jax.group_conv), not a plain "
                         "convolution; expected 'auto', 'fast' or 'xla'")
    precision = as_precision(precision)
    if w.shape[0] != w.shape[1]:
        raise ValueError(f"w: expected a square kernel, got shape {w.shape}")
    x, w = _common_dtype(x, w)
    padding = tuple(tuple(p) for p in padding)
    if impl == "xla":
        return _xla_conv(x, w, padding, dilation, precision)
    return _fast_conv(x, w, padding, dilation, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _per_example_conv(x, w, padding, dilation, precision):
    return _each(lambda xb, wb: _xla_conv(xb, wb[0], padding, dilation, precision), x, w)


def _per_example_fwd(x, w, padding, dilation, precision):
    return _per_example_conv(x, w, padding, dilation, precision), (x, w)


def _per_example_bwd(padding, dilation, precision, residuals, dy):
    x, w = residuals
    k = w.shape[1]
    tpad = _transpose_padding(padding, k, dilation)
    dx = _each(lambda dyb, wb: _xla_conv(dyb, _flip_kernel(wb[0]), tpad, dilation, precision),
               dy, w)
    dw = _each(lambda xb, dyb: filter_gradient(xb, dyb, k, padding, dilation, precision)[None],
               x, dy)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_per_example_conv.defvjp(_per_example_fwd, _per_example_bwd)


def _grouped_conv(x, w, padding, dilation, precision):
    """Per-example kernels as one grouped convolution: the batch folded into channels."""
    b, h, wd, c = x.shape
    k = w.shape[1]
    xg = jnp.moveaxis(x, 0, 2).reshape(1, h, wd, b * c)
    wg = jnp.moveaxis(w, 0, 3).reshape(k, k, c, -1)  # [k, k, C, B * O]
    y = lax.conv_general_dilated(xg, wg, (1, 1), padding, rhs_dilation=(dilation,) * 2,
                                 dimension_numbers=_DIMS, feature_group_count=b,
                                 precision=precision)
    return jnp.moveaxis(y.reshape(*y.shape[1:3], b, -1), 2, 0)


def _patches_conv(x, w, padding, dilation, precision):
    """Per-example kernels by row patches and one batched matmul.

    The ``k`` row-shifted slices of the padded input are stacked along channels (``k``
    times the input, not ``k * k``), multiplied with the kernels arranged as
    ``[B, k * C, k * O]``, and the ``k`` column shifts are applied to the products and
    summed: data movement plus one batched matmul, forward and backward.
    """
    (plo, phi), (qlo, qhi) = padding
    b, h, wd, c = x.shape
    k, out = w.shape[1], w.shape[-1]
    span = dilation * (k - 1) + 1
    oh, ow = h + plo + phi - span + 1, wd + qlo + qhi - span + 1
    xp = jnp.pad(x, ((0, 0), (plo, phi), (qlo, qhi), (0, 0)))
    rows = jnp.concatenate([xp[:, i * dilation:i * dilation + oh] for i in range(k)], axis=-1)
    kmat = jnp.moveaxis(w, 2, 3).reshape(b, k * c, k * out)  # [B, (i, c), (j, o)]
    z = jnp.einsum("bhwp,bpq->bhwq", rows, kmat, precision=precision)
    z = z.reshape(b, oh, wd + qlo + qhi, k, out)
    return sum(z[:, :, j * dilation:j * dilation + ow, j] for j in range(k))


_PER_EXAMPLE = {"xla": _grouped_conv, "fast": _per_example_conv, "patches": _patches_conv}


def per_example_conv(x, w, padding, dilation: int = 1,
                     precision: str | lax.Precision | None = DEFAULT_PRECISION,
                     impl: str | None = "auto"):
    """Cross-correlate each example ``x [B, H, W, C]`` with its own kernel ``w [B, k, k, C, O]``.

    ``impl`` is a dynamic entry of :data:`IMPLS` other than ``"linear"`` (which needs the
    K banks, see :func:`dgcnn_jax.dynamic.dynamic_conv`): ``"xla"`` (grouped
    convolution), ``"fast"`` (one batch-1 convolution per example, custom VJP) or
    ``"patches"`` (batched matmul); ``"auto"`` as :func:`resolve` says. ``precision``:
    see :data:`PRECISIONS`. Returns ``[B, H', W', O]``.
    """
    precision = as_precision(precision)
    if len(getattr(w, "shape", ())) != 5 or w.shape[0] != x.shape[0] or w.shape[1] != w.shape[2]:
        raise ValueError(f"w: expected per-example square kernels [{x.shape[0]}, k, k, "
                         f"{x.shape[-1]}, O], got shape {tuple(getattr(w, 'shape', ()))}")
    impl = resolve(impl, "dynamic")
    if impl not in _PER_EXAMPLE:
        why = ("mixes K banks" if impl == "linear" else
               "moves the input of lifting and group convolutions")
        raise ValueError(f"impl: {impl!r} {why} and has no per-example form for a plain "
                         f"convolution; expected one of auto, {', '.join(_PER_EXAMPLE)}")
    padding = tuple(tuple(p) for p in padding)
    return _PER_EXAMPLE[impl](x, w, padding, dilation, precision)
