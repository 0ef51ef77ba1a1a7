"""Filter banks: the transformed copies of a kernel that make a convolution equivariant.

Kernel layouts (spatial axes first, as ``lax.conv`` HWIO):

* lifting kernel ``[kh, kw, in_channels, out_channels]`` (a plain image kernel);
* group kernel ``[kh, kw, in_channels, |G|, out_channels]``: the input's group axis
  sits right after its channels, as in the feature-map layout.

The bank stacks, along a new last (output group) axis, the kernel transformed by every
group element ``g``: the lifting bank is ``L_g psi`` (spatial transform only), and the
group bank is ``T(g) psi`` with ``[T(g) psi](y, h) = psi(g^-1 y, g^-1 h)``: the spatial
transform plus the permutation of the input group axis by the group law. ``T`` is a
homomorphism: ``T(g) T(h) = T(gh)``. Both functions are pure and jit-able.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._checks import shape_of
from .groups import Group, get_group

__all__ = ["lifting_filter_bank", "group_filter_bank", "transform_group_kernel"]


def _check_kernel(kernel, rank: int, layout: str) -> tuple[int, ...]:
    shape = shape_of(kernel)
    if len(shape) != rank:
        raise ValueError(f"kernel: expected shape {layout} (rank {rank}), got shape {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"kernel: spatial size must be positive, got shape {shape}")
    return shape


def transform_group_kernel(kernel: jax.Array, g: int, group: Group | str) -> jax.Array:
    """``T(g) psi`` for a group kernel ``[kh, kw, in_channels, |G|, out_channels]``."""
    group = get_group(group)
    _check_kernel(kernel, 5, f"[kh, kw, in_channels, {group.order}, out_channels]")
    return group.transform_feature_map(kernel, g, spatial_axes=(0, 1), group_axis=3)


def lifting_filter_bank(kernel: jax.Array, group: Group | str) -> jax.Array:
    """Bank of a lifting convolution Z2 -> G.

    Args:
      kernel: ``[kh, kw, in_channels, out_channels]``.
      group: the group or its name.

    Returns:
      ``[kh', kw', in_channels, out_channels, |G|]`` where ``bank[..., g] = L_g kernel``
      (``kh' = kw' = kh`` for square kernels).
    """
    group = get_group(group)
    shape = _check_kernel(kernel, 4, "[kh, kw, in_channels, out_channels]")
    if shape[0] != shape[1] and group.order > 1:
        raise ValueError(f"kernel: expected a square kernel for {group.name}, got shape {shape}")
    return jnp.stack([group.transform_image(kernel, g, axes=(0, 1))
                      for g in range(group.order)], axis=-1)


def group_filter_bank(kernel: jax.Array, group: Group | str) -> jax.Array:
    """Bank of a group convolution G -> G.

    Args:
      kernel: ``[kh, kw, in_channels, |G|, out_channels]``.
      group: the group or its name.

    Returns:
      ``[kh, kw, in_channels, |G|, out_channels, |G|]`` where ``bank[..., g] = T(g) kernel``.
    """
    group = get_group(group)
    shape = _check_kernel(kernel, 5, f"[kh, kw, in_channels, {group.order}, out_channels]")
    if shape[3] != group.order:
        raise ValueError(
            f"kernel: input group axis (3) has size {shape[3]}, expected {group.order} for "
            f"{group.name}: shape [kh, kw, in_channels, {group.order}, out_channels], "
            f"got {shape}")
    if shape[0] != shape[1]:
        raise ValueError(f"kernel: expected a square kernel, got shape {shape}")
    return jnp.stack([group.transform_feature_map(kernel, g, spatial_axes=(0, 1), group_axis=3)
                      for g in range(group.order)], axis=-1)
