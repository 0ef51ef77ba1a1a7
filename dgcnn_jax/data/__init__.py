"""Data: 28 px archives (MedMNIST 2D, PBC blood cells), grain input pipelines and
on-device ones (:mod:`._device`); PCam and BreakHis builders live in
:mod:`dgcnn_jax.data.tfds_sources` (imported on demand: it loads TFDS)."""

from . import medmnist, pbc
from .medmnist import ChecksumError, DatasetInfo, default_data_dir, fetch, info, load
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
    "medmnist",
    "pbc",
    "ChecksumError",
    "DatasetInfo",
    "default_data_dir",
    "fetch",
    "info",
    "load",
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
