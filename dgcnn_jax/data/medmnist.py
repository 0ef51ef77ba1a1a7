"""Archives in the MedMNIST layout: locate, download, verify and load.

The MedMNIST 2D datasets (official ``.npz`` archives), ``pbc`` (``pbc28.npz``, PBC
blood cells, see :mod:`dgcnn_jax.data.pbc`), ``idc`` (``idc50.npz``, breast
histopathology, :mod:`dgcnn_jax.data.idc`) and any archive built with
:mod:`dgcnn_jax.data.folder` (found by its ``<name>.report.json``). Keys
``{split}_images`` uint8 ``[N, H, W]`` or ``[N, H, W, C]`` and ``{split}_labels``
``[N, L]``, with fixed splits ``train`` / ``val`` / ``test`` (and, for datasets with
groups such as IDC's patients, ``{split}_<group key>``). The data directory is, in
order: the ``data_dir`` argument, the environment variable ``DGCNN_DATA_DIR``, or a user
cache folder
(``$XDG_CACHE_HOME/dgcnn_jax/medmnist``, default ``~/.cache/dgcnn_jax/medmnist``).
``data_dir`` and ``DGCNN_DATA_DIR`` may name several folders separated by ``os.pathsep``
(``:`` on Linux): a file is looked for in each, in order, and downloaded into the first.

A missing MedMNIST file is downloaded from the official release, written to a temporary
file in the data directory, checked against the official MD5 and only then renamed
into place; a file whose checksum does not match is never used (and never deleted).
Archives built locally (``pbc``, ``idc``, folders) are never downloaded: a missing one
names the command that builds it (``python -m experiments.prepare_data ...``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import tempfile
import urllib.error
import urllib.request

import numpy as np

from . import folder as _folder
from . import idc as _idc
from . import pbc as _pbc

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "DEFAULT_URL",
    "SPLITS",
    "ChecksumError",
    "DatasetInfo",
    "default_data_dir",
    "fetch",
    "info",
    "load",
    "load_groups",
    "md5sum",
]

DEFAULT_URL = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"
DEFAULT_DATASET = "breastmnist"
SPLITS = ("train", "val", "test")
MEDMNIST_CITATION = ("J. Yang et al., MedMNIST v2 - A large-scale lightweight benchmark for "
                     "2D and 3D biomedical image classification, Scientific Data 10, 41 (2023)")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Facts of one dataset (MedMNIST v2 release, PBC, IDC, or one built from a folder)."""

    name: str
    md5: str
    num_classes: int
    channels: int
    task: str  # "binary-class", "multi-class", "ordinal-regression" or "multi-label"
    split_sizes: tuple[int, int, int]  # train, val, test
    classes: tuple[str, ...] = ()  # class names by label, where known
    licence: str = "see the MedMNIST v2 release"
    citation: str = MEDMNIST_CITATION
    url: str | None = DEFAULT_URL  # download address template; None: built locally
    filename: str = ""  # default: "{name}.npz"
    image_size: int = 28  # height and width of the archive's images
    view_size: int = 0  # the size models see by default (0: image_size; see center_view)
    group_key: str = ""  # archive key {split}_<group_key> of each image's group (patient)
    caveat: str = ""  # what a user must know before comparing numbers
    build: str = ""  # the command that builds a local archive (url None)

    @property
    def file(self) -> str:
        """The archive's file name."""
        return self.filename or f"{self.name}.npz"


DATASETS = {d.name: d for d in [
    DatasetInfo("pathmnist", "a8b06965200029087d5bd730944a56c1", 9, 3, "multi-class",
                (89996, 10004, 7180)),
    DatasetInfo("chestmnist", "02c8a6516a18b556561a56cbdd36c4a8", 14, 1, "multi-label",
                (78468, 11219, 22433)),
    DatasetInfo("dermamnist", "0744692d530f8e62ec473284d019b0c7", 7, 3, "multi-class",
                (7007, 1003, 2005)),
    DatasetInfo("octmnist", "c68d92d5b585d8d81f7112f81e2d0842", 4, 1, "multi-class",
                (97477, 10832, 1000)),
    DatasetInfo("pneumoniamnist", "28209eda62fecd6e6a2d98b1501bb15f", 2, 1, "binary-class",
                (4708, 524, 624), ("normal", "pneumonia"), "CC BY 4.0",
                f"{MEDMNIST_CITATION}; D. S. Kermany et al., Cell 172(5) (2018)"),
    DatasetInfo("retinamnist", "bd4c0672f1bba3e3a89f0e4e876791e4", 5, 3, "ordinal-regression",
                (1080, 120, 400)),
    DatasetInfo("breastmnist", "750601b1f35ba3300ea97c75c52ff8f6", 2, 1, "binary-class",
                (546, 78, 156), ("malignant", "normal or benign"), "CC BY 4.0",
                f"{MEDMNIST_CITATION}; W. Al-Dhabyani et al., Dataset of breast ultrasound "
                f"images, Data in Brief 28 (2020)"),
    DatasetInfo("bloodmnist", "7053d0359d879ad8a5505303e11de1dc", 8, 3, "multi-class",
                (11959, 1712, 3421)),
    DatasetInfo("tissuemnist", "ebe78ee8b05294063de985d821c1c34b", 8, 1, "multi-class",
                (165466, 23640, 47280)),
    DatasetInfo("organamnist", "866b832ed4eeba67bfb9edee1d5544e6", 11, 1, "multi-class",
                (34581, 6491, 17778)),
    DatasetInfo("organcmnist", "0afa5834fb105f7705a7d93372119a21", 11, 1, "multi-class",
                (13000, 2392, 8268)),
    DatasetInfo("organsmnist", "e5c39f1af030238290b9557d9503af9d", 11, 1, "multi-class",
                (13940, 2452, 8829)),
    DatasetInfo("pbc", _pbc.MD5, len(_pbc.CLASSES), 3, "multi-class", (11952, 1707, 3415),
                _pbc.CLASSES, _pbc.LICENCE, _pbc.CITATION, None, _pbc.FILENAME,
                build="python -m experiments.prepare_data pbc --root "
                      "PBC_dataset_normal_DIB --data-dir DIR"),
    DatasetInfo("idc", _idc.MD5, 2, 3, "binary-class", (7162, 768, 2177), _idc.CLASSES,
                _idc.LICENCE, _idc.CITATION, None, _idc.FILENAME, _idc.IMAGE_SIZE,
                _idc.VIEW_SIZE, "patients", _idc.CAVEAT,
                "python -m experiments.prepare_data idc --root FOLDER --data-dir DIR (FOLDER "
                "in the Kaggle layout <patient>/<0|1>/*.png)"),
]}


class ChecksumError(ValueError):
    """A data file's checksum differs from the official one."""


def info(name: str, data_dir: str | os.PathLike | None = None) -> DatasetInfo:
    """The :class:`DatasetInfo` of a built-in dataset, or of one built with
    ``prepare_data folder`` (its ``<name>.report.json`` in a folder of ``data_dir``, see
    :func:`fetch`); unknown names list the known ones."""
    if name in DATASETS:
        return DATASETS[name]
    if isinstance(name, str) and name and "/" not in name and not name.startswith("."):
        for folder in _data_dirs(data_dir):
            report = folder / f"{name}.report.json"
            if report.is_file():
                return _built_info(name, _folder.read_report(report))
    raise ValueError(f"dataset: unknown dataset {name!r}; known datasets: "
                     f"{', '.join(DATASETS)}, or one built with `python -m "
                     f"experiments.prepare_data folder --name NAME` ({name}.npz and "
                     f"{name}.report.json in a folder of data_dir or DGCNN_DATA_DIR)")


def _built_info(name: str, report: dict) -> DatasetInfo:
    classes = tuple(report["classes"])
    height, width, channels = report["image_shape"]
    sizes = tuple(report["split_sizes"][s] for s in SPLITS)
    recipe = report.get("recipe") or {}
    return DatasetInfo(name, report["md5"], len(classes), channels,
                       "binary-class" if len(classes) == 2 else "multi-class", sizes,
                       classes, "as the source folder's", f"built from {report.get('root')}",
                       None, f"{name}.npz", height if height == width else 0,
                       group_key=recipe.get("group_key", "") if report.get("split_groups")
                       else "", build=f"python -m experiments.prepare_data folder --name "
                       f"{name} --root {report.get('root')}")


def _data_dirs(data_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
    """The folders to look in: ``data_dir``, else ``$DGCNN_DATA_DIR``, else the cache."""
    if data_dir is None:
        data_dir = os.environ.get("DGCNN_DATA_DIR") or None
    if data_dir is None:
        cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
        return [pathlib.Path(cache) / "dgcnn_jax" / "medmnist"]
    parts = [p for p in os.fspath(data_dir).split(os.pathsep) if p]
    return [pathlib.Path(p).expanduser() for p in parts] or [pathlib.Path(".")]


def default_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """``data_dir``, else ``$DGCNN_DATA_DIR``, else the user cache folder (the first
    folder where several are named): where downloads go."""
    return _data_dirs(data_dir)[0]


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: pathlib.Path, expected: str, remedy: str = "delete it to download it "
            "again") -> None:
    actual = md5sum(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: MD5 checksum mismatch: expected {expected}, got {actual}; the file is "
            f"corrupt or not the official archive ({remedy})")


def fetch(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True,
          url: str = DEFAULT_URL, timeout: float = 60.0) -> pathlib.Path:
    """Path of a verified ``{name}.npz``, downloading it if it is missing.

    Raises:
      ValueError: unknown dataset name.
      ChecksumError: the file (present or downloaded) does not match the official MD5;
        a bad download is deleted and nothing is written in its place.
      FileNotFoundError: the file is missing and cannot be downloaded; the message says
        where to put which file.
    """
    meta = info(name, data_dir)
    folders = _data_dirs(data_dir)
    for folder in folders:
        if (folder / meta.file).is_file():
            path = folder / meta.file
            if meta.url is None:
                _verify(path, meta.md5, f"rebuild it with `{meta.build}`")
            else:
                _verify(path, meta.md5)
            return path
    folder = folders[0]
    path = folder / meta.file
    if meta.url is None:
        raise FileNotFoundError(
            f"{meta.file} not found in {', '.join(map(str, folders))}: it is not downloaded; "
            f"build it with `{meta.build}` (MD5 {meta.md5}) and point data_dir or "
            f"DGCNN_DATA_DIR at DIR")
    source = url.format(name=name)
    where = (f"put the official {name}.npz (MD5 {meta.md5}, from {source}) into {folder}, "
             f"or set DGCNN_DATA_DIR to a folder that has it")
    if not download:
        raise FileNotFoundError(f"{path} not found and download=False: {where}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FileNotFoundError(f"cannot create data directory {folder} ({err}): {where}")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    except OSError as err:  # e.g. a read-only data directory
        raise FileNotFoundError(f"{path} not found and {folder} is not writable "
                                f"({err.strerror}): {where}") from None
    tmp = pathlib.Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(source, timeout=timeout) as response:
                    while block := response.read(1 << 20):
                        out.write(block)
            except (urllib.error.URLError, OSError) as err:
                raise FileNotFoundError(
                    f"{path} not found and downloading {source} failed ({err}): {where}"
                ) from err
        _verify(tmp, meta.md5)
        os.replace(tmp, path)  # atomic within one folder
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load(name: str = DEFAULT_DATASET, split: str = "train",
         data_dir: str | os.PathLike | None = None, *,
         download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, H, W, C]`` (NHWC) and labels of one official split.

    Labels are ``int32 [N]`` for single-label tasks and ``[N, L]`` for multi-label ones.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    meta = info(name, data_dir)
    path = fetch(name, data_dir, download=download)
    with np.load(path) as archive:
        images = archive[f"{split}_images"]
        labels = archive[f"{split}_labels"]
    if images.ndim == 3:
        images = images[..., None]
    labels = labels.astype(np.int32)
    if meta.task != "multi-label":
        labels = labels.reshape(-1)
    return images, labels


def load_groups(name: str, split: str = "train",
                data_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The group (for ``idc``: the patient) of every image of one split, in the order of
    :func:`load`; ``ValueError`` for a dataset without groups."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    meta = info(name, data_dir)
    if not meta.group_key:
        raise ValueError(f"dataset: {name} has no groups (datasets with groups: "
                         f"{', '.join(n for n, d in DATASETS.items() if d.group_key)}, or "
                         f"one built with a group key)")
    with np.load(fetch(name, data_dir, download=False)) as archive:
        return archive[f"{split}_{meta.group_key}"]
