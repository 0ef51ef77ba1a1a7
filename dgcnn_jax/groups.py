"""The groups p4 and p4m as immutable values.

Convention (the only one used in this package)
----------------------------------------------
Images are NHWC arrays ``[batch, height, width, channels]``; the spatial axes are
(height, width) = (row, column).

* ``R`` is a rotation by 90 degrees counter-clockwise as an image is displayed
  (row 0 on top): ``R x = jnp.rot90(x, 1, axes=(height, width))``.
* ``M`` is the mirror that reverses the width axis (left-right flip):
  ``M x = jnp.flip(x, axis=width)``.

Every element is written ``g = M^m R^r`` with ``m in {0, 1}``, ``r in {0, 1, 2, 3}``
and has the **index** ``4 * m + r``: p4 is ``R^0..R^3`` (indices 0-3) and p4m adds
``M R^0..M R^3`` (indices 4-7). As an operator on images, ``M^m R^r`` first rotates
by ``r`` quarter turns and then mirrors if ``m == 1``. The product ``g h`` is the
element whose operator is "apply ``h``, then ``g``", so that
``L_g L_h = L_{gh}`` (a left action).

Group feature maps are ``[batch, height, width, channels, |G|]`` (group axis last).
A feature map is a function ``F(x, c, g)``; the group acts on it by

    ``(L_h F)(x, c, g) = F(h^-1 x, c, h^-1 g)``

which in arrays is: transform every spatial slice like an image, then permute the
group axis, ``new[..., g] = old[..., cayley[inverse[h], g]]``.

The tables are computed once from these operators when the module is imported and
are stored in frozen dataclasses of tuples: hashable (usable as static arguments of
``jax.jit``) and immutable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

__all__ = ["Group", "Z2", "P4", "P4M", "get_group", "available_groups"]

_ROT_NAMES = ("e", "r", "r2", "r3")


def _apply_element(x, rotation: int, mirror: int, axes: tuple[int, int]):
    """Apply ``M^mirror R^rotation`` to the two spatial ``axes`` of ``x`` (numpy or jax)."""
    xp = np if isinstance(x, np.ndarray) else jnp
    if rotation % 4:
        x = xp.rot90(x, rotation % 4, axes=axes)
    if mirror:
        x = xp.flip(x, axis=axes[1])
    return x


@dataclasses.dataclass(frozen=True)
class Group:
    """A finite group of pixel-grid symmetries (p4 or p4m).

    Attributes:
      name: ``"p4"`` or ``"p4m"``.
      rotations: quarter turns ``r`` of each element (index -> r).
      mirrors: mirror flag ``m`` of each element (index -> m).
      element_names: readable names, e.g. ``"r2"`` or ``"mr3"`` (= ``M R^3``).
      cayley: ``cayley[g][h]`` is the index of ``g h``.
      inverse: ``inverse[g]`` is the index of ``g^-1``.
    """

    name: str
    rotations: tuple[int, ...]
    mirrors: tuple[int, ...]
    element_names: tuple[str, ...]
    cayley: tuple[tuple[int, ...], ...]
    inverse: tuple[int, ...]

    @property
    def order(self) -> int:
        """Number of elements ``|G|``."""
        return len(self.rotations)

    @property
    def identity(self) -> int:
        """Index of the identity element (always 0)."""
        return 0

    @property
    def cayley_table(self) -> np.ndarray:
        """The Cayley table as a read-only ``[|G|, |G|]`` int array."""
        table = np.asarray(self.cayley, dtype=np.int32)
        table.flags.writeable = False
        return table

    @property
    def inverse_table(self) -> np.ndarray:
        """The inverses as a read-only ``[|G|]`` int array."""
        table = np.asarray(self.inverse, dtype=np.int32)
        table.flags.writeable = False
        return table

    def __repr__(self) -> str:
        return f"Group({self.name!r}, order={self.order})"

    def _check_element(self, g) -> int:
        if isinstance(g, (bool, np.bool_)) or not isinstance(g, (int, np.integer)):
            raise ValueError(
                f"g: expected a group element index (int in [0, {self.order})) of {self.name}, "
                f"got {g!r}")
        if not 0 <= int(g) < self.order:
            raise ValueError(
                f"g: element index {g} is out of range for {self.name} (order {self.order})")
        return int(g)

    def multiply(self, g: int, h: int) -> int:
        """Index of the product ``g h`` (apply ``h`` first, then ``g``)."""
        return self.cayley[self._check_element(g)][self._check_element(h)]

    def invert(self, g: int) -> int:
        """Index of ``g^-1``."""
        return self.inverse[self._check_element(g)]

    def permutation(self, g: int) -> tuple[int, ...]:
        """Group-axis gather indices of ``L_g``: ``new[..., k] = old[..., perm[k]]``.

        ``perm[k]`` is the index of ``g^-1 k``.
        """
        g_inv = self.inverse[self._check_element(g)]
        return self.cayley[g_inv]

    def transform_image(self, x, g: int, axes: tuple[int, int] = (-3, -2)):
        """Apply ``L_g`` to an image batch (default NHWC: spatial ``axes=(-3, -2)``).

        Works on numpy and jax arrays of any rank; ``axes`` are the (height, width) axes.
        """
        g = self._check_element(g)
        return _apply_element(x, self.rotations[g], self.mirrors[g], axes)

    def transform_feature_map(
        self,
        x,
        g: int,
        spatial_axes: tuple[int, int] = (-4, -3),
        group_axis: int = -1,
    ):
        """Apply ``L_g`` to a group feature map (default ``[B, H, W, C, |G|]``).

        ``(L_g F)(x, c, k) = F(g^-1 x, c, g^-1 k)``: the spatial axes are transformed
        like an image and the group axis is permuted by :meth:`permutation`.
        """
        g = self._check_element(g)
        if x.shape[group_axis] != self.order:
            raise ValueError(
                f"x: group axis {group_axis} has size {x.shape[group_axis]}, "
                f"expected {self.order} for {self.name}")
        x = _apply_element(x, self.rotations[g], self.mirrors[g], spatial_axes)
        perm = self.permutation(g)
        if perm == tuple(range(self.order)):
            return x
        xp = np if isinstance(x, np.ndarray) else jnp
        return xp.take(x, np.asarray(perm), axis=group_axis)


def _make_group(name: str, elements: Sequence[tuple[int, int]]) -> Group:
    """Build the tables of a group from its (rotation, mirror) elements.

    Products are found by composing the image operators on a probe with distinct
    entries, on which every element of D4 acts differently.
    """
    probe = np.arange(9).reshape(3, 3)
    signatures = [_apply_element(probe, r, m, (0, 1)).tobytes() for r, m in elements]
    if len(set(signatures)) != len(elements):
        raise AssertionError("group elements must act differently on the probe")
    index = {s: i for i, s in enumerate(signatures)}
    cayley = []
    for rg, mg in elements:
        row = []
        for rh, mh in elements:
            composed = _apply_element(_apply_element(probe, rh, mh, (0, 1)), rg, mg, (0, 1))
            key = composed.tobytes()
            if key not in index:
                raise AssertionError(f"{name} is not closed under composition")
            row.append(index[key])
        cayley.append(tuple(row))
    inverse = tuple(row.index(0) for row in cayley)
    names = tuple(("m" if m else "") + (_ROT_NAMES[r] if (r or not m) else "")
                  for r, m in elements)
    return Group(
        name=name,
        rotations=tuple(r for r, _ in elements),
        mirrors=tuple(m for _, m in elements),
        element_names=names,
        cayley=tuple(cayley),
        inverse=inverse,
    )


Z2 = _make_group("z2", [(0, 0)])
"""The trivial group (translations only): a "G-CNN" on Z2 is a plain CNN whose
feature maps carry a group axis of size 1. Used for the non-equivariant baselines."""

P4 = _make_group("p4", [(r, 0) for r in range(4)])
"""Translations and rotations by multiples of 90 degrees (4 elements)."""

P4M = _make_group("p4m", [(r, m) for m in range(2) for r in range(4)])
"""p4 plus mirror reflections (8 elements, the dihedral group D4)."""

_GROUPS = {"z2": Z2, "p4": P4, "p4m": P4M}


def available_groups() -> tuple[str, ...]:
    """Names accepted by :func:`get_group`."""
    return tuple(_GROUPS)


def get_group(group: Group | str) -> Group:
    """Return a :class:`Group` given the group itself or its name (``"z2"``, ``"p4"``,
    ``"p4m"``)."""
    if isinstance(group, Group):
        return group
    if isinstance(group, str) and group.lower() in _GROUPS:
        return _GROUPS[group.lower()]
    raise ValueError(f"group: unknown group {group!r}; known groups: {', '.join(_GROUPS)}")
