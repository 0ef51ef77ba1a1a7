"""IDC breast cancer histopathology (Janowczyk & Madabhushi 2016): facts, the
``idc50.npz`` recipe and the views the 28 px model family trains on.

50x50 RGB patches of H&E-stained breast cancer whole-slide images, labelled invasive
ductal carcinoma (IDC, 1) or not (0), with the patient of every patch. Tissue has no
preferred orientation: D4 invariance is the right prior. ``idc50.npz`` holds a subset
of 10,107 patches of 279 patients (the subset a public repository carries; how it was
drawn from the full release is not documented), split **by patient** 195 / 28 / 56.
It is read with ``dgcnn_jax.data.load("idc", split)`` (patients:
``dgcnn_jax.data.load_groups``) and checked against :data:`MD5`; it is never downloaded:
:func:`build` makes it from the Kaggle layout ``<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_
class<C>.png`` (``python -m experiments.prepare_data idc --root FOLDER``) with
:data:`RECIPE` (see :mod:`dgcnn_jax.data.folder`: PNG files whose name agrees with their
folders, 50x50 patches only, split by patient at seed 0).

Views (:func:`dgcnn_jax.data.center_view`): the models pool by 2, exact only on even
sizes, and 50 is not one. The default view is the centre 48x48 crop averaged over 2x2
blocks to 24x24; ``input_size=48`` keeps the full-resolution centre crop.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from . import folder

__all__ = ["CLASSES", "MD5", "FILENAME", "LICENCE", "CITATION", "CAVEAT", "RECIPE",
           "IMAGE_SIZE", "VIEW_SIZE", "build"]

CLASSES = ("non-IDC", "IDC")
FILENAME = "idc50.npz"
MD5 = "0056a897bd99d237b312c9edd0993068"  # of the idc50.npz made by RECIPE
IMAGE_SIZE = 50
VIEW_SIZE = 24  # the default view: centre 48x48 crop averaged 2x2
LICENCE = ("listed as CC0 (public domain) where redistributed on Kaggle as 'Breast "
           "Histopathology Images' (not verified); for research, cite both papers")
CITATION = ("A. Janowczyk and A. Madabhushi, Deep learning for digital pathology image "
            "analysis: a comprehensive tutorial with selected use cases, J. Pathol. Inform. "
            "7:29 (2016); A. Cruz-Roa et al., Automatic detection of invasive ductal "
            "carcinoma in whole slide images with convolutional neural networks, SPIE "
            "Medical Imaging 2014")
CAVEAT = ("a subset of 10,107 of the 277,524 patches (279 patients), as a public "
          "repository carries it; how it was drawn is not documented; edge patches "
          "smaller than 50x50 are dropped; not comparable one to one with published "
          "slide-level splits")
RECIPE = folder.Recipe(
    name="idc50", layout="group/class", extensions=(".png",), signature=folder.PNG_SIGNATURE,
    name_pattern=r"(?P<group>\d+)_idx5_x\d+_y\d+_class(?P<class>\d+)\.png",
    require_size=(IMAGE_SIZE, IMAGE_SIZE), class_names=CLASSES, group_key="patients")


def build(root: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int = 0,
          progress: Callable[[int, int], None] | None = None) -> folder.BuildReport:
    """Build ``idc50.npz`` (and its report) in ``out_dir`` from a Kaggle-layout folder."""
    return folder.build(root, out_dir, dataclasses.replace(RECIPE, seed=seed),
                        progress=progress)
