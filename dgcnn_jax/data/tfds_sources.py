"""PatchCamelyon and BreakHis-style folders as TFDS ``array_record`` data, no TensorFlow.

TFDS's own ``patch_camelyon`` builder encodes PNGs with TensorFlow; the builders here
store what TFDS can write without it (raw uint8 tensors, zlib-compressed, or PNG bytes)
and are read back with ``tfds.data_source`` (random access, for grain). Needs the
optional dependencies of the extra ``tfds`` (tensorflow-datasets, h5py).

* :class:`DgcnnPatchCamelyon` (``"dgcnn_patch_camelyon"``): the official PCam splits
  (262,144 / 32,768 / 32,768 patches of 96x96x3, label 1 = tumour in the centre).
  Prepared once with ``python -m experiments.prepare_data pcam``: it downloads the six
  official ``.h5.gz`` files, or, fully offline, reads them from the manual directory
  (``--manual-dir``, default ``<data_dir>/downloads/manual``).
* :class:`DgcnnBreakhis` (``"dgcnn_breakhis"``): a local folder tree
  ``<class>/<patient>/<magnification>/*.png`` (BreakHis layout), split by patient so
  that no patient is in two splits (seeded, per class).
"""

from __future__ import annotations

import gzip
import os
import pathlib
import shutil

import numpy as np

try:
    import tensorflow_datasets as tfds
except ImportError as err:  # an optional dependency: the extra "tfds"
    raise ImportError("dgcnn_jax.data.tfds_sources needs tensorflow-datasets: install the "
                      "extra, pip install 'dgcnn_jax[tfds]'") from err

__all__ = [
    "DgcnnPatchCamelyon",
    "DgcnnBreakhis",
    "PCAM_FILES",
    "PCAM_URL",
    "prepare_pcam",
    "pcam_source",
    "prepare_breakhis",
    "breakhis_source",
    "breakhis_patient_splits",
]

PCAM_URL = "https://zenodo.org/records/2546921/files/{name}.h5.gz?download=1"
_PCAM_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
PCAM_FILES = tuple(f"camelyonpatch_level_2_split_{s}_{xy}"
                   for s in _PCAM_SPLITS.values() for xy in ("x", "y"))


def _gunzip(path: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
    out = out_dir / path.name[:-3]
    if not out.exists():
        tmp = out.with_suffix(".h5.part")
        with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        tmp.replace(out)
    return out


class DgcnnPatchCamelyon(tfds.core.GeneratorBasedBuilder):
    """PatchCamelyon (Veeling et al. 2018; CC0) as uint8 tensors."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "For offline preparation place the six official files " + ", ".join(
            f"{n}.h5.gz" for n in PCAM_FILES) + " in the manual directory.")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="PatchCamelyon 96x96 H&E patches; label 1: tumour in the centre.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(96, 96, 3), dtype=np.uint8,
                                              encoding=tfds.features.Encoding.ZLIB),
                "label": tfds.features.ClassLabel(names=["normal", "tumor"]),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/basveeling/pcam",
        )

    def _split_generators(self, dl_manager):
        try:
            manual = pathlib.Path(dl_manager.manual_dir)
        except AssertionError:  # no manual directory
            manual = None
        if manual and all((manual / f"{n}.h5.gz").is_file() for n in PCAM_FILES):
            work = pathlib.Path(dl_manager.download_dir) / "pcam_extracted"
            work.mkdir(parents=True, exist_ok=True)
            paths = {n: _gunzip(manual / f"{n}.h5.gz", work) for n in PCAM_FILES}
        else:
            paths = dl_manager.download_and_extract(
                {n: PCAM_URL.format(name=n) for n in PCAM_FILES})
        return {split: self._generate_examples(
                    paths[f"camelyonpatch_level_2_split_{s}_x"],
                    paths[f"camelyonpatch_level_2_split_{s}_y"])
                for split, s in _PCAM_SPLITS.items()}

    def _generate_examples(self, x_path, y_path):
        import h5py

        with h5py.File(x_path, "r") as fx, h5py.File(y_path, "r") as fy:
            x, y = fx["x"], fy["y"]
            for start in range(0, len(x), 4096):
                images = x[start:start + 4096]
                labels = np.asarray(y[start:start + 4096]).reshape(len(images), -1)[:, 0]
                for i, (image, label) in enumerate(zip(images, labels)):
                    yield start + i, {"image": image, "label": int(label)}


def _default_tfds_dir(data_dir):
    return os.fspath(data_dir) if data_dir else os.path.expanduser("~/tensorflow_datasets")


def prepare_pcam(data_dir=None, manual_dir=None) -> None:
    """One-time preparation of ``dgcnn_patch_camelyon`` as array_record in ``data_dir``."""
    data_dir = _default_tfds_dir(data_dir)
    manual_dir = manual_dir or os.path.join(data_dir, "downloads", "manual")
    builder = DgcnnPatchCamelyon(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))


def _missing(name, data_dir, command):
    return FileNotFoundError(
        f"{name} is not prepared in {data_dir}: run `{command}` once (see "
        f"docs/data.md)")


def pcam_source(split: str, data_dir=None):
    """Random-access source of a prepared PCam split (``train``, ``validation``, ``test``)."""
    if split not in _PCAM_SPLITS:
        raise ValueError(f"split: expected one of {', '.join(_PCAM_SPLITS)}, got {split!r}")
    data_dir = _default_tfds_dir(data_dir)
    builder = DgcnnPatchCamelyon(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        raise _missing("dgcnn_patch_camelyon", data_dir,
                       f"python -m experiments.prepare_data pcam --data-dir {data_dir}")
    return tfds.data_source("dgcnn_patch_camelyon", split=split, data_dir=data_dir)


# --------------------------------------------------------------------------- BreakHis

BREAKHIS_SPLITS = ("train", "validation", "test")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _subdirs(folder: pathlib.Path) -> list[pathlib.Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError as err:  # e.g. a symbolic link that points to itself
        raise ValueError(f"root: cannot read {folder} ({err.strerror or err}); remove or fix "
                         f"that entry") from None


def _breakhis_tree(root: pathlib.Path):
    """``[(class, patient, magnification, path)]`` of every PNG under ``root``.

    Checks what would silently corrupt a patient split: a patient folder reached twice
    (a symbolic link or copy path to the same folder would put one patient in two splits),
    symbolic-link loops, and files named ``.png`` (any case) that are not PNG images.
    """
    items, seen = [], {}
    for class_dir in _subdirs(root):
        for patient_dir in _subdirs(class_dir):
            try:
                real = patient_dir.resolve(strict=True)
            except (OSError, RuntimeError) as err:
                raise ValueError(f"root: cannot resolve {patient_dir} ({err}); remove or fix "
                                 f"that entry") from None
            if real in seen:
                raise ValueError(f"root: {patient_dir} and {seen[real]} are the same folder "
                                 f"({real}): one patient would count twice and could land in "
                                 f"two splits; remove one of them")
            seen[real] = patient_dir
            for mag_dir in _subdirs(patient_dir):
                for png in sorted(p for p in mag_dir.iterdir()
                                  if p.suffix.lower() == ".png" and p.is_file()):
                    with png.open("rb") as f:
                        if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                            raise ValueError(f"root: {png} is not a PNG image (no PNG "
                                             f"signature); remove or replace it")
                    items.append((class_dir.name, patient_dir.name, mag_dir.name, png))
    return items


def breakhis_patient_splits(root, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict:
    """Patients per split: each class's patients shuffled with ``seed`` and cut by
    ``fractions`` (rounded; validation and test get at least one patient each), so no patient is in two
    splits and every split gets every class. A class with fewer patients than splits is
    refused (it cannot be in every split)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: BreakHis folder {root} does not exist")
    by_class: dict[str, list[str]] = {}
    for cls, patient, _, _ in _breakhis_tree(root):
        by_class.setdefault(cls, [])
        if patient not in by_class[cls]:
            by_class[cls].append(patient)
    if not by_class:
        raise FileNotFoundError(f"root: no <class>/<patient>/<magnification>/*.png under {root}")
    few = {cls: len(p) for cls, p in sorted(by_class.items()) if len(p) < len(BREAKHIS_SPLITS)}
    if few:
        raise ValueError(f"root: every class needs at least {len(BREAKHIS_SPLITS)} patients "
                         f"(one per split); "
                         f"{', '.join(f'{c} has {n}' for c, n in few.items())}")
    splits = {s: [] for s in BREAKHIS_SPLITS}
    rng = np.random.default_rng(seed)
    for cls in sorted(by_class):
        patients = sorted(by_class[cls])
        order = [patients[i] for i in rng.permutation(len(patients))]
        n_train = int(round(fractions[0] * len(order)))
        n_val = max(1, int(round(fractions[1] * len(order))))
        n_train = min(n_train, len(order) - n_val - 1)  # leaves >= 1 patient for test
        for split, part in zip(BREAKHIS_SPLITS, (order[:n_train], order[n_train:n_train + n_val],
                                                 order[n_train + n_val:])):
            splits[split] += [(cls, p) for p in part]
    return splits


class DgcnnBreakhis(tfds.core.GeneratorBasedBuilder):
    """A BreakHis-style folder tree, split by patient; images kept as PNG bytes."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point --root at a folder <class>/<patient>/<magnification>/*.png.")

    def __init__(self, *, root=None, seed: int = 0, **kwargs):
        self._root = pathlib.Path(root) if root else None
        self._seed = seed
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="BreakHis-style histology PNGs split by patient.",
            metadata=tfds.core.MetadataDict(seed=self._seed),  # the split's seed
            features=tfds.features.FeaturesDict({
                "image_png": tfds.features.Tensor(shape=(), dtype=np.object_),
                "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                "class_name": tfds.features.Tensor(shape=(), dtype=np.object_),
                "patient": tfds.features.Tensor(shape=(), dtype=np.object_),
                "magnification": tfds.features.Tensor(shape=(), dtype=np.object_),
            }),
        )

    def _split_generators(self, dl_manager):
        if self._root is None:
            raise ValueError("root: the BreakHis folder is needed to prepare dgcnn_breakhis")
        splits = breakhis_patient_splits(self._root, seed=self._seed)
        classes = sorted({cls for part in splits.values() for cls, _ in part})
        items = _breakhis_tree(self._root)
        return {split: self._generate_examples(items, set(part), classes)
                for split, part in splits.items()}

    def _generate_examples(self, items, members, classes):
        for cls, patient, mag, path in items:
            if (cls, patient) in members:
                yield str(path), {"image_png": path.read_bytes(), "label": classes.index(cls),
                                  "class_name": cls, "patient": patient,
                                  "magnification": mag}


def prepare_breakhis(root, data_dir=None, seed: int = 0) -> None:
    """Prepare a BreakHis-style folder as ``dgcnn_breakhis`` array_record in ``data_dir``."""
    data_dir = _default_tfds_dir(data_dir)
    builder = DgcnnBreakhis(root=root, seed=seed, data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
        stored = (builder.info.metadata or {}).get("seed")
        if stored != seed:
            raise ValueError(f"seed: dgcnn_breakhis in {data_dir} was prepared with seed "
                             f"{stored}, not {seed}; delete {builder.data_dir} or pass another "
                             f"--data-dir to prepare a new split")
        return
    builder.download_and_prepare()


def breakhis_source(split: str, data_dir=None):
    """Random-access source of a prepared BreakHis split."""
    if split not in BREAKHIS_SPLITS:
        raise ValueError(f"split: expected one of {', '.join(BREAKHIS_SPLITS)}, got {split!r}")
    data_dir = _default_tfds_dir(data_dir)
    builder = DgcnnBreakhis(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        raise _missing("dgcnn_breakhis", data_dir,
                       f"python -m experiments.prepare_data breakhis --root <folder> "
                       f"--data-dir {data_dir}")
    return tfds.data_source("dgcnn_breakhis", split=split, data_dir=data_dir)
