"""PBC peripheral blood cells (Acevedo et al. 2020): facts and the ``pbc28.npz`` builder.

Single-cell microscopy, 8 classes, one centred cell per image: a rotated or mirrored
cell is the same cell, so D4 invariance is the right prior (unlike BreastMNIST or
PneumoniaMNIST, whose images have a canonical orientation). ``pbc28.npz`` is a 28x28
RGB derivative in the MedMNIST archive layout (plus ``{split}_files``, the source file
of each image, and ``classes``), read with ``dgcnn_jax.data.load("pbc", split)`` and
checked against :data:`MD5`.

:func:`build` makes it from the official folder ``PBC_dataset_normal_DIB`` (one folder
per class of JPEG files) by this recipe:

1. Classes are the folder names in sorted order.
2. Byte-identical duplicates: the first copy (sorted by class, then file name) is kept
   when every copy has the same class; every copy is dropped when the classes differ.
   Files that do not decode as images are dropped (every file is read, whatever its
   suffix).
3. Each image is decoded as RGB, centre-cropped to 200x200 (offset ``(size - 200) //
   2`` on each axis) and resized to 28x28 with PIL's BOX (area) filter.
4. Each class is split 70 / 10 / 20 % (rounded) into train / val / test by a
   permutation from ``numpy.random.default_rng(seed)``, drawn class by class in label
   order; within a split, images are ordered by class, then file name.

Needs Pillow (a dependency of the ``experiments`` extra) to build, not to load.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from . import folder

__all__ = ["CLASSES", "MD5", "FILENAME", "LICENCE", "CITATION", "CROP", "SIZE",
           "SPLIT_FRACTIONS", "RECIPE", "build"]

CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
           "neutrophil", "platelet")
FILENAME = "pbc28.npz"
MD5 = "320dfd92bbcfba114f86f02cbe95b18f"  # of the pbc28.npz made by this recipe, seed 0
LICENCE = "CC BY 4.0"
CITATION = ("A. Acevedo et al., A dataset of microscopic peripheral blood cell images for "
            "development of automatic recognition systems, Data in Brief 30 (2020) 105474; "
            "Mendeley Data, doi:10.17632/snkd93bnjr.1")
CROP = 200
SIZE = 28
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train, val, test


RECIPE = folder.Recipe(name="pbc28", extensions=(), crop=CROP, size=SIZE,
                       fractions=SPLIT_FRACTIONS, classes_first=True)
"""The recipe above as a :class:`dgcnn_jax.data.folder.Recipe` (every file is read;
what does not decode is dropped)."""


def build(root: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int = 0,
          progress: Callable[[int, int], None] | None = None) -> folder.BuildReport:
    """Build ``pbc28.npz`` (and its report) in ``out_dir`` from the official folder
    ``root`` (see the recipe); :func:`dgcnn_jax.data.folder.build` does the work.

    ``progress(done, total)`` is called as files are read. The archive is written to a
    temporary file in ``out_dir`` and renamed into place, so an interrupted build leaves
    no partial archive. Errors name the path: a root without class folders, a file that
    cannot be read, a broken link or a link loop.
    """
    return folder.build(root, out_dir, dataclasses.replace(RECIPE, seed=seed),
                        progress=progress)
