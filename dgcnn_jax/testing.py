"""Equivariance checks that users can call on any function or module.

``assert_equivariant(fn, group, x, input_kind=..., output_kind=...)`` checks
``fn(L_g x) == L_g fn(x)`` for **every** element ``g`` of the group (no sampling),
with the error measured relative to the scale of ``fn(x)``.

Kinds (see :mod:`dgcnn_jax.groups` for the action):

* ``"image"``: ``[B, H, W, C]``; ``L_g`` acts on the spatial axes.
* ``"group"``: ``[B, H, W, C, |G|]``; ``L_g`` acts on space and permutes the group axis.
* ``"invariant"`` (outputs only): ``L_g`` acts trivially, e.g. logits ``[B, classes]``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._checks import check_choice
from .groups import Group, get_group

__all__ = ["transform", "equivariance_errors", "assert_equivariant"]

_INPUT_KINDS = ("image", "group")
_OUTPUT_KINDS = ("image", "group", "invariant")


def transform(x, g: int, group: Group | str, kind: str):
    """Apply ``L_g`` to ``x`` of the given kind (``"image"``, ``"group"``, ``"invariant"``)."""
    group = get_group(group)
    check_choice(kind, "kind", _OUTPUT_KINDS)
    if kind == "invariant":
        return x
    if kind == "image":
        if x.ndim < 3:
            raise ValueError(f"x: an 'image' needs [..., H, W, C], got shape {tuple(x.shape)}")
        return group.transform_image(x, g, axes=(-3, -2))
    if x.ndim < 4:
        raise ValueError(
            f"x: a 'group' feature map needs [..., H, W, C, {group.order}], got shape "
            f"{tuple(x.shape)}")
    return group.transform_feature_map(x, g)


def equivariance_errors(
    fn: Callable,
    group: Group | str,
    x,
    *,
    input_kind: str = "image",
    output_kind: str = "group",
) -> np.ndarray:
    """Relative equivariance error of ``fn`` for every group element.

    Returns a float64 array ``[|G|]``: ``max |fn(L_g x) - L_g fn(x)| / max |fn(x)|``.
    """
    group = get_group(group)
    check_choice(input_kind, "input_kind", _INPUT_KINDS)
    check_choice(output_kind, "output_kind", _OUTPUT_KINDS)
    y = np.asarray(fn(x), dtype=np.float64)
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    if not np.isfinite(scale):
        raise AssertionError("fn(x) is not finite")
    scale = max(scale, np.finfo(np.float32).tiny)
    errors = np.empty(group.order)
    for g in range(group.order):
        y_of_gx = np.asarray(fn(transform(x, g, group, input_kind)), dtype=np.float64)
        g_of_y = np.asarray(transform(y, g, group, output_kind), dtype=np.float64)
        if y_of_gx.shape != g_of_y.shape:
            raise AssertionError(
                f"element {group.element_names[g]}: fn(L_g x) has shape {y_of_gx.shape} but "
                f"L_g fn(x) has shape {g_of_y.shape}")
        errors[g] = float(np.max(np.abs(y_of_gx - g_of_y))) / scale if y.size else 0.0
    return errors


def assert_equivariant(
    fn: Callable,
    group: Group | str,
    x,
    *,
    input_kind: str = "image",
    output_kind: str = "group",
    rtol: float = 1e-5,
) -> np.ndarray:
    """Assert ``fn(L_g x) == L_g fn(x)`` for every ``g`` to ``rtol`` of the output scale.

    Args:
      fn: a function or module call taking one array.
      group: the group or its name.
      x: an input of ``input_kind`` (``"image"`` or ``"group"``).
      output_kind: ``"image"``, ``"group"`` or ``"invariant"``.
      rtol: largest allowed ``max|error| / max|fn(x)|``.

    Returns:
      The per-element relative errors (``[|G|]``).

    Raises:
      AssertionError: naming every element whose error exceeds ``rtol``.
    """
    group = get_group(group)
    errors = equivariance_errors(fn, group, x, input_kind=input_kind, output_kind=output_kind)
    bad = [f"{group.element_names[g]}: {errors[g]:.3g}" for g in range(group.order)
           if not errors[g] <= rtol]
    if bad:
        raise AssertionError(
            f"not {group.name}-equivariant ({input_kind} -> {output_kind}) to rtol={rtol:g}; "
            f"relative errors: {', '.join(bad)}")
    return errors
