"""2D cross-correlation (NHWC x HWIO) with a fast filter gradient (private).

XLA's CPU backend computes a convolution's filter gradient several times slower than
the convolution itself (it runs as a convolution with an image-sized kernel), and its
batched convolutions run slower per image than batch-1 ones at large images. The
``"fast"`` implementation runs the forward pass and the input gradient (a convolution
of the output gradient with the 180-degree-rotated kernel) of wide layers as one
batch-1 XLA convolution per example (``lax.map``), and computes the filter gradient as
one matrix product of row patches and shifted output gradients, accumulated over
chunks of the batch to bound memory:

    dW[i, j, c, o] = sum_{b, y, x} xpad[b, y + i d, x + j d, c] * dy[b, y, x, o]

``rows[b, y, x', (i, c)] = xpad[b, y + i d, x', c]`` (k row shifts of the padded
input) and ``dz[b, y, x', (j, o)] = dy[b, y, x' - j d, o]`` (k column shifts of the
output gradient, zero outside) give ``dW = rows^T dz`` with the contraction over
``b, y, x'``. ``"xla"`` is the reference: ``lax.conv_general_dilated`` and its autodiff.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("auto", "fast", "xla")
# "auto": on the CPU backend the fast filter gradient wins from about 2**23 input
# elements (measured on 2 cores: 0.53-0.81x of XLA's fwd+bwd time at 8-19 M elements,
# 1.2-1.5x at 1-4 M); other backends keep XLA's own gradient.
AUTO_FAST_MIN_ELEMENTS = 1 << 23
_DIMS = ("NHWC", "HWIO", "NHWC")
_CHUNK_ELEMENTS = 1 << 24  # about 64 MiB of float32 row patches per chunk


def _xla_conv(x, w, padding, dilation, precision):
    return lax.conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=(dilation, dilation),
                                    dimension_numbers=_DIMS, precision=precision)


def filter_gradient(x, dy, kernel_size: int, padding, dilation: int = 1, precision=None):
    """``dW [k, k, C, O]`` of a stride-1 cross-correlation, by chunked row-patch matmuls."""
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


def resolve_impl(impl: str | None, x_size: int) -> str:
    """The implementation ``"auto"`` (or ``None``) stands for, for an input of ``x_size``."""
    impl = "auto" if impl is None else impl
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl: expected one of {', '.join(IMPLEMENTATIONS)}, got {impl!r}")
    if impl == "auto":
        fast = jax.default_backend() == "cpu" and x_size >= AUTO_FAST_MIN_ELEMENTS
        return "fast" if fast else "xla"
    return impl


def conv2d(x, w, padding, dilation: int = 1, precision=None, impl: str | None = None):
    """Stride-1 cross-correlation of ``x [B, H, W, C]`` with ``w [k, k, C, O]``.

    ``padding`` is explicit ``[(lo, hi), (lo, hi)]``; ``impl`` is ``"auto"`` (default,
    chosen by size and backend), ``"fast"`` or ``"xla"`` (reference); all give the same
    values and gradients.
    """
    impl = resolve_impl(impl, x.size)
    if w.shape[0] != w.shape[1]:
        raise ValueError(f"w: expected a square kernel, got shape {w.shape}")
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


def per_example_conv(x, w, padding, dilation: int = 1, precision=None):
    """Cross-correlate each example ``x [B, H, W, C]`` with its own kernel ``w [B, k, k, C, O]``.

    One batch-1 XLA convolution per example (``lax.map``), forward and for the input
    gradient (a convolution with the 180-degree-rotated kernel); the kernel gradient is
    :func:`filter_gradient` per example. Returns ``[B, H', W', O]``.
    """
    if w.ndim != 5 or w.shape[0] != x.shape[0] or w.shape[1] != w.shape[2]:
        raise ValueError(f"w: expected per-example square kernels [{x.shape[0]}, k, k, "
                         f"{x.shape[-1]}, O], got shape {w.shape}")
    padding = tuple(tuple(p) for p in padding)
    return _per_example_conv(x, w, padding, dilation, precision)
