"""The trainer's view of a dataset: in-memory arrays (MedMNIST, PBC, IDC, folders built
with ``prepare_data folder``) or a TFDS source (PCam).

``open_dataset(name, data_dir)`` gives the facts (classes, channels), the normalisation
statistics of the training split, one seeded grain dataset per training epoch, and the
validation and test splits as uint8 arrays. Everything else in the trainer is the same
for both kinds.

* MedMNIST 2D names (``breastmnist``, ``pneumoniamnist``, ...), ``pbc``, ``idc`` and
  built folders: the ``.npz`` archive in ``data_dir`` (MedMNIST files downloaded when
  missing; every file checked against its MD5), seen through the view of
  ``input_size`` (:func:`dgcnn_jax.data.center_view`; IDC: 24 px by default);
  statistics over the whole training split's view.
* ``pcam``: the ``dgcnn_patch_camelyon`` TFDS data prepared once with
  ``python -m experiments.prepare_data pcam --data-dir DIR``; the training split is read
  by random access (it does not fit a laptop's memory), statistics over a seeded sample
  of ``STAT_EXAMPLES`` training patches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grain
import numpy as np

from dgcnn_jax import data

STAT_EXAMPLES = 4096
# name -> (classes, channels); splits are read through tfds_sources
SOURCE_DATASETS = {"pcam": (2, 3)}


def dataset_facts(name: str, data_dir=None) -> tuple[int, int]:
    """``(num_classes, channels)``; ``ValueError`` for unknown or multi-label datasets."""
    if name in SOURCE_DATASETS:
        return SOURCE_DATASETS[name]
    try:
        meta = data.info(name, data_dir)
    except ValueError as err:
        raise ValueError(f"{err}; or a source dataset: {', '.join(SOURCE_DATASETS)}") from None
    if meta.task == "multi-label":
        raise ValueError(f"dataset: {name} is multi-label; this trainer handles single-label "
                         f"tasks")
    return meta.num_classes, meta.channels


def class_names(name: str, data_dir=None) -> tuple[str, ...]:
    """Class names by label where the dataset has them (else ``()``)."""
    if name in SOURCE_DATASETS:
        return ()
    return data.info(name, data_dir).classes


def view_size(name: str, input_size: int = 0, data_dir=None) -> int:
    """The image size a model sees: ``input_size``, or the dataset's default view;
    ``ValueError`` naming ``input_size`` where it is not a centred view of the images."""
    if name in SOURCE_DATASETS:
        if input_size:
            raise ValueError(f"input_size: {name} is read at its own size (use 0)")
        return 96
    meta = data.info(name, data_dir)
    size = input_size or meta.view_size or meta.image_size
    if meta.image_size:
        data.view_geometry(meta.image_size, size)
    return size


def image_recipe(name: str, data_dir=None) -> dict:
    """How a stored image of ``name`` is made from an image file (for prediction on new
    files): ``mode`` ("RGB" or "L"), ``require_size`` ([height, width] or None),
    ``crop`` and ``size`` (see :class:`dgcnn_jax.data.folder.Recipe`)."""
    if name in SOURCE_DATASETS:
        return {"mode": "RGB", "require_size": [96, 96], "crop": None, "size": None}
    meta = data.info(name, data_dir)
    if name in ("pbc", "idc"):
        recipe = dataclasses.asdict(getattr(data, name).RECIPE)
    elif meta.url is None:  # built with prepare_data folder: its report has the recipe
        recipe = data.folder.read_report(data.fetch(name, data_dir).with_suffix(
            ".report.json"))["recipe"]
    else:  # MedMNIST: 28 px images as released
        recipe = {"mode": "RGB" if meta.channels == 3 else "L", "crop": None, "size": None,
                  "require_size": [meta.image_size, meta.image_size]}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.items()
            if k in ("mode", "require_size", "crop", "size")}


@dataclasses.dataclass
class Dataset:
    """Open dataset: facts, training statistics, epochs and evaluation splits."""

    name: str
    num_classes: int
    channels: int
    num_train: int
    mean: np.ndarray
    std: np.ndarray
    _train_epoch: Callable[..., grain.MapDataset]
    _split: Callable[[str], tuple[np.ndarray, np.ndarray]]
    input_size: int = 28  # the view's height and width
    _groups: Callable[[str], np.ndarray | None] = lambda split: None

    def groups(self, split: str) -> np.ndarray | None:
        """The group (IDC: patient) of every image of ``split``; None without groups."""
        return self._groups(split)

    def train_epoch(self, *, batch_size: int, epoch: int, seed: int, augment: bool,
                    shard: tuple[int, int] | None = None) -> grain.MapDataset:
        """Shuffled (seed, epoch), normalised, full batches of the training split
        (``shard=(index, count)``: this process's rows of each, see
        :func:`dgcnn_jax.data.epoch_dataset`)."""
        return self._train_epoch(batch_size=batch_size, mean=self.mean, std=self.std,
                                 epoch=epoch, seed=seed, augment=augment, shard=shard)

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8 images [N, H, W, C], int labels [N])`` of ``"val"`` or ``"test"``."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}")
        return self._split(split)


def open_dataset(name: str, data_dir=None, *, train_fraction: float = 1.0,
                 data_seed: int = 0, input_size: int = 0) -> Dataset:
    """Open ``name`` (see the module docstring) reading from ``data_dir``.

    ``train_fraction < 1`` keeps a class-stratified subset of the training split
    (:func:`dgcnn_jax.data.stratified_subset` with ``data_seed``: the same images for every
    model); its statistics are the subset's. Validation and test splits are untouched.
    ``input_size``: the view (0: the dataset's default, see :func:`view_size`).
    """
    num_classes, channels = dataset_facts(name, data_dir)
    size = view_size(name, input_size, data_dir)
    if name == "pcam":
        if train_fraction != 1.0:
            raise ValueError("train_fraction: subsets of pcam are not supported (use 1.0)")
        return _open_pcam(data_dir, num_classes, channels, size)
    meta = data.info(name, data_dir)

    def load(which):
        x, y = data.load(name, which, data_dir)
        return (x if x.shape[1] == size else data.center_view(x, size)), y

    train_x, train_y = load("train")
    keep = None
    if train_fraction != 1.0:
        keep = data.stratified_subset(train_y, train_fraction, data_seed)
        train_x, train_y = train_x[keep], train_y[keep]
    mean, std = data.normalization_stats(train_x)

    def train_epoch(**kwargs):
        return data.epoch_dataset(train_x, train_y, **kwargs)

    def split(which):
        return (train_x, train_y) if which == "train" else load(which)

    def groups(which):
        if not meta.group_key:
            return None
        found = data.load_groups(name, which, data_dir)
        return found[keep] if which == "train" and keep is not None else found

    return Dataset(name, num_classes, channels, len(train_x), mean, std, train_epoch, split,
                   size, groups)


def _materialise(source) -> tuple[np.ndarray, np.ndarray]:
    rows = [source[i] for i in range(len(source))]
    return (np.stack([np.asarray(r["image"], np.uint8) for r in rows]),
            np.array([int(r["label"]) for r in rows], np.int32))


def _open_pcam(data_dir, num_classes, channels, size) -> Dataset:
    from dgcnn_jax.data import tfds_sources

    train = tfds_sources.pcam_source("train", data_dir)
    sample = np.random.default_rng(0).permutation(len(train))[:STAT_EXAMPLES]
    mean, std = data.normalization_stats(
        np.stack([np.asarray(train[int(i)]["image"], np.uint8) for i in sample]))

    def train_epoch(**kwargs):
        return data.source_dataset(train, **kwargs)

    def split(which):
        tfds_split = {"train": "train", "val": "validation", "test": "test"}[which]
        return _materialise(tfds_sources.pcam_source(tfds_split, data_dir))

    return Dataset("pcam", num_classes, channels, len(train), mean, std, train_epoch, split,
                   size)
