"""Shared test helpers: seeded random inputs and the real-data location."""

import os
import pathlib

import jax
import numpy as np
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

RTOL = 1e-5  # float32 equivariance error relative to the output scale


def data_dir() -> pathlib.Path | None:
    """The folder with real MedMNIST files: ``DGCNN_DATA_DIR`` or ``../shared/data``."""
    env = os.environ.get("DGCNN_DATA_DIR")
    candidates = [pathlib.Path(env)] if env else []
    candidates.append(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist")
    for path in candidates:
        if (path / "breastmnist.npz").is_file():
            return path
    return None


@pytest.fixture
def medmnist_dir() -> pathlib.Path:
    path = data_dir()
    if path is None:
        pytest.skip("real MedMNIST files not found: set DGCNN_DATA_DIR to a folder with "
                    "breastmnist.npz and pneumoniamnist.npz (.ci/run points it at "
                    "../shared/data/medmnist)")
    return path


def normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
