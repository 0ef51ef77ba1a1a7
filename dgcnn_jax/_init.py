"""Truncated-normal initialisers (He, LeCun) that compile a handful of programs, not one
per kernel shape.

``jax.nn.initializers.he_normal()`` compiles its random draw once per shape (about half
a second each on a CPU core), and a model's kernels come in many shapes. These draw the
same values from a program per power-of-two size: with the partitionable threefry
(JAX's default) element ``i`` of a draw depends only on the key and ``i``, so the first
``n`` values of a longer flat draw are the values of the shape's own draw. The scale is
applied in float32 on the host, as IEEE multiplication rounds the same everywhere. Tests
check the values bitwise against JAX's initialisers.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_MIN_SIZE = 1024


@functools.partial(jax.jit, static_argnums=1)
def _standard_draw(key: jax.Array, size: int) -> jax.Array:
    """``size`` standard normals truncated to (-2, 2), float32, as JAX draws them."""
    return jax.random.truncated_normal(key, -2.0, 2.0, (size,), np.float32)


def _fan_in(shape: tuple[int, ...]) -> int:
    """The fan-in as ``jax.nn.initializers.variance_scaling`` counts it (input axis -2,
    the axes before it the receptive field)."""
    if len(shape) < 2:
        raise ValueError(f"a kernel needs at least 2 axes to have a fan-in, got shape {shape}")
    return shape[-2] * math.prod(shape[:-2])


def _truncated_normal_init(scale: float):
    def init(key: jax.Array, shape, dtype=np.float32) -> jax.Array:
        shape = tuple(int(d) for d in shape)
        if np.dtype(dtype) != np.float32 or isinstance(key, jax.core.Tracer):
            # other dtypes, or inside a traced program (jit, eval_shape): JAX's own
            return jax.nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")(
                key, shape, dtype)
        n = math.prod(shape)
        size = max(_MIN_SIZE, 1 << max(n - 1, 0).bit_length())
        draw = np.asarray(_standard_draw(key, size))[:n].reshape(shape)
        variance = np.float32(scale / _fan_in(shape))
        stddev = np.sqrt(variance) / np.float32(.87962566103423978)
        return jnp.asarray(draw * stddev)

    return init


def he_normal():
    """``jax.nn.initializers.he_normal()``, bitwise, for float32 kernels."""
    return _truncated_normal_init(2.0)


def lecun_normal():
    """``jax.nn.initializers.lecun_normal()``, bitwise, for float32 kernels."""
    return _truncated_normal_init(1.0)
