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
   Files that do not decode as images are dropped.
3. Each image is decoded as RGB, centre-cropped to 200x200 (offset ``(size - 200) //
   2`` on each axis) and resized to 28x28 with PIL's BOX (area) filter.
4. Each class is split 70 / 10 / 20 % (rounded) into train / val / test by a
   permutation from ``numpy.random.default_rng(seed)``, drawn class by class in label
   order; within a split, images are ordered by class, then file name.

Needs Pillow (a dependency of the ``experiments`` extra) to build, not to load.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pathlib
import tempfile
from collections.abc import Callable

import numpy as np

__all__ = ["CLASSES", "MD5", "FILENAME", "LICENCE", "CITATION", "CROP", "SIZE",
           "SPLIT_FRACTIONS", "BuildReport", "build"]

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
_SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class BuildReport:
    """What :func:`build` kept and dropped (paths relative to the root, ``class/file``)."""

    path: pathlib.Path  # the archive written
    kept: int
    split_sizes: tuple[int, int, int]
    dropped_not_images: tuple[str, ...]
    dropped_cross_class_duplicates: tuple[str, ...]
    dropped_same_class_duplicates: tuple[str, ...]


def _class_folders(root: pathlib.Path) -> list[pathlib.Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"root: {root} is not a folder (expected the official "
                                f"PBC_dataset_normal_DIB folder, one folder per class)")
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as err:
        raise OSError(f"root: cannot list {root}: {err.strerror or err}") from err
    if not folders:
        raise FileNotFoundError(f"root: {root} has no class folders (expected one folder per "
                                f"class, e.g. {root / 'basophil'})")
    return folders


def _files(folder: pathlib.Path) -> list[pathlib.Path]:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as err:
        raise OSError(f"cannot list {folder}: {err.strerror or err}") from err
    files = []
    for path in entries:
        try:
            if path.is_dir():
                continue
            path.resolve(strict=True)  # a broken link or a link loop raises here
        except (OSError, RuntimeError) as err:
            raise OSError(f"{path}: cannot be read ({getattr(err, 'strerror', None) or err}); "
                          f"a broken symbolic link or a link loop?") from err
        files.append(path)
    return files


def _read(path: pathlib.Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise OSError(f"{path}: cannot be read ({err.strerror or err})") from err


def _image(data: bytes) -> np.ndarray | None:
    """The 28x28 RGB uint8 image of a file's bytes by the recipe; None if not an image."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    w, h = im.size
    left, top = (w - CROP) // 2, (h - CROP) // 2
    im = im.crop((left, top, left + CROP, top + CROP)).resize((SIZE, SIZE), Image.BOX)
    return np.asarray(im, np.uint8)


def build(root: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int = 0,
          progress: Callable[[int, int], None] | None = None) -> BuildReport:
    """Build ``pbc28.npz`` in ``out_dir`` from the official folder ``root`` (see the recipe).

    ``progress(done, total)`` is called as images are processed. The archive is
    written to a temporary file in ``out_dir`` and renamed into place, so an
    interrupted build leaves no partial archive. Errors name the path: a root without
    class folders, a file that cannot be read, a broken link or a link loop.
    """
    root = pathlib.Path(root)
    out_dir = pathlib.Path(out_dir)
    classes = [p.name for p in _class_folders(root)]
    # every file's bytes digest, by class then file name
    entries = []  # (class index, relative name, path, digest)
    for label, name in enumerate(classes):
        for path in _files(root / name):
            digest = hashlib.sha256(_read(path)).hexdigest()
            entries.append((label, f"{name}/{path.name}", path, digest))
    groups = collections.defaultdict(list)
    for entry in entries:
        groups[entry[3]].append(entry)
    cross, same = [], []
    keep = []
    for entry in entries:
        copies = groups[entry[3]]
        if len({c[0] for c in copies}) > 1:
            cross.append(entry[1])
        elif copies[0] is not entry:
            same.append(entry[1])
        else:
            keep.append(entry)
    images, labels, names, not_images = [], [], [], []
    for i, (label, name, path, _) in enumerate(keep):
        image = _image(_read(path))
        if image is None:
            not_images.append(name)
        else:
            images.append(image)
            labels.append(label)
            names.append(name)
        if progress is not None:
            progress(i + 1, len(keep))
    if not images:
        raise ValueError(f"root: no image in {root} decodes (expected JPEG files in "
                         f"{len(classes)} class folders)")
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    parts = {s: [] for s in _SPLITS}
    for label in range(len(classes)):
        members = np.flatnonzero(labels == label)  # by file name within the class
        perm = members[rng.permutation(len(members))]
        n_train = int(round(SPLIT_FRACTIONS[0] * len(members)))
        n_val = int(round(SPLIT_FRACTIONS[1] * len(members)))
        parts["train"].append(np.sort(perm[:n_train]))
        parts["val"].append(np.sort(perm[n_train:n_train + n_val]))
        parts["test"].append(np.sort(perm[n_train + n_val:]))
    images = np.stack(images)
    names = np.asarray(names)
    arrays = {"classes": np.asarray(classes)}
    for split in _SPLITS:
        index = np.concatenate(parts[split]).astype(np.int64)
        arrays[f"{split}_images"] = images[index]
        arrays[f"{split}_labels"] = labels[index].astype(np.uint8)[:, None]
        arrays[f"{split}_files"] = names[index]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / FILENAME
    for stale in out_dir.glob(f".{FILENAME}.*.part"):  # left by a build that was killed
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{FILENAME}.", suffix=".part", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as any other output (mkstemp makes it 0600)
        os.replace(tmp, target)  # atomic within one folder
    finally:
        pathlib.Path(tmp).unlink(missing_ok=True)
    sizes = tuple(len(arrays[f"{s}_labels"]) for s in _SPLITS)
    return BuildReport(target, len(images), sizes, tuple(not_images), tuple(cross), tuple(same))
