"""What a model sees of a stored image: a centred crop averaged over blocks.

A view of size ``s`` of ``H x H`` images takes the centred ``crop = f s`` square (the
largest ``f`` with ``crop <= H`` and ``H - crop`` even, so that the crop is centred
exactly and commutes with every rotation and mirror of the square) and averages it over
``f x f`` blocks (the mean of ``f^2`` uint8 values, rounded half up: integer
arithmetic, the same on every machine). Block averaging commutes with D4 as well, so
a D4-invariant model stays invariant on the stored images. IDC: 50 px images, view 24 =
the centre 48 crop averaged 2x2; view 48 = the centre 48 crop.
"""

from __future__ import annotations

import numpy as np

__all__ = ["view_geometry", "center_view"]


def view_geometry(image_size: int, size: int) -> tuple[int, int]:
    """``(crop, factor)`` of the view of size ``size`` of ``image_size`` square images."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not \
            1 <= size <= image_size:
        raise ValueError(f"input_size: expected a size from 1 to the images' {image_size}, "
                         f"got {size!r}")
    factor = image_size // size
    while factor > 0 and (image_size - factor * size) % 2:
        factor -= 1
    if factor == 0:
        raise ValueError(f"input_size: {size} cannot be a centred view of {image_size} px "
                         f"images (their difference is odd and no multiple fits)")
    return factor * size, factor


def center_view(images: np.ndarray, size: int) -> np.ndarray:
    """The view of size ``size`` (module docstring) of uint8 images ``[N, H, H, C]``."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
        raise ValueError(f"images: expected uint8 [N, H, H, C] (square), got "
                         f"{images.dtype} {images.shape}")
    crop, factor = view_geometry(images.shape[1], size)
    start = (images.shape[1] - crop) // 2
    x = images[:, start:start + crop, start:start + crop]
    if factor == 1:
        return np.ascontiguousarray(x)
    area = factor * factor
    # the f x f block sums as f^2 strided additions (several times faster than a sum
    # over the axes of a reshaped view); 256 * area bounds a sum plus half the area
    sums = np.zeros((x.shape[0], size, size, x.shape[3]),
                    np.uint16 if 256 * area <= np.iinfo(np.uint16).max else np.uint32)
    for i in range(factor):
        for j in range(factor):
            sums += x[:, i::factor, j::factor]
    return ((sums + area // 2) // area).astype(np.uint8)
