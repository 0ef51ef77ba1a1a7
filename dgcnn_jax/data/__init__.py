"""Data: MedMNIST 2D archives and grain input pipelines."""

from . import medmnist
from .medmnist import ChecksumError, DatasetInfo, default_data_dir, fetch, info, load
from .pipeline import epoch_dataset, epoch_iterator, normalization_stats, num_batches, random_d4

__all__ = [
    "medmnist",
    "ChecksumError",
    "DatasetInfo",
    "default_data_dir",
    "fetch",
    "info",
    "load",
    "epoch_dataset",
    "epoch_iterator",
    "normalization_stats",
    "num_batches",
    "random_d4",
]
