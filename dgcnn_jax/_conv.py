"""2D cross-correlation (NHWC x HWIO) with a fast filter gradient (private).

XLA's CPU backend computes a convolution's filter gradient several times slower than
the convolution itself (it runs as a convolution with an image-sized kernel). The
``"fast"`` implementation keeps XLA's forward pass and input gradient and computes the
filter gradient as one matrix product of row patches and shifted output gradients,
accumulated over chunks of the batch to bound memory:

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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _fast_conv(x, w, padding, dilation, precision):
    return _xla_conv(x, w, padding, dilation, precision)


def _fast_fwd(x, w, padding, dilation, precision):
    return _xla_conv(x, w, padding, dilation, precision), (x, w)


def _fast_bwd(padding, dilation, precision, residuals, dy):
    x, w = residuals
    _, vjp_x = jax.vjp(lambda v: _xla_conv(v, w, padding, dilation, precision), x)
    (dx,) = vjp_x(dy)
    dw = filter_gradient(x, dy, w.shape[0], padding, dilation, precision)
    return dx, dw.astype(w.dtype)


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
