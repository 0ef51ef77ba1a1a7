"""Data: archives in the MedMNIST layout (MedMNIST 2D, PBC blood cells, IDC breast
histopathology, and folders of images built with :mod:`.folder`), views of them
(:func:`center_view`), grain input pipelines and on-device ones (:mod:`._device`); PCam
and BreakHis builders live in :mod:`dgcnn_jax.data.tfds_sources` (imported on demand: it
loads TFDS)."""

from . import folder, idc, medmnist, pbc
from ._views import center_view, view_geometry
from .medmnist import (
    ChecksumError,
    DatasetInfo,
    default_data_dir,
    fetch,
    info,
    load,
    load_groups,
)
from ._device import epoch_batches, epoch_key, normalize, pass_key, random_d4_batch, step_batches
from ._pipeline import (
    epoch_dataset,
    epoch_iterator,
    normalization_stats,
    num_batches,
    random_d4,
    source_dataset,
    stratified_subset,
)

__all__ = [
    "folder",
    "idc",
    "medmnist",
    "pbc",
    "ChecksumError",
    "DatasetInfo",
    "default_data_dir",
    "fetch",
    "info",
    "load",
    "load_groups",
    "center_view",
    "view_geometry",
    "epoch_dataset",
    "source_dataset",
    "epoch_iterator",
    "normalization_stats",
    "num_batches",
    "random_d4",
    "stratified_subset",
    "epoch_key",
    "epoch_batches",
    "pass_key",
    "step_batches",
    "random_d4_batch",
    "normalize",
]
