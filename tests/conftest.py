"""Shared test helpers: seeded random inputs and the real-data location."""

import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

# (no global precision setting: the library passes precision="highest" to every
# convolution and matrix product itself, and the tests check that default)
RTOL = 1e-5  # float32 equivariance error relative to the output scale


SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config):
    """One JAX compilation cache per test process, inherited by the training commands the
    tests start: the runs a test compares (uninterrupted, killed, resumed) compile the same
    programs, and each is compiled once. Removed at the end; not shared between sessions."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        cache = tempfile.mkdtemp(prefix="dgcnn_jax_cache_")
        config._dgcnn_jax_cache = cache
        os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_collection_modifyitems(config, items):
    """The slow tests (training runs, subprocesses) first. With ``--dist worksteal`` (make
    test) one worker starts on them and the other, done with the quick ones, takes half of
    what is left: no long test runs alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_unconfigure(config):
    cache = getattr(config, "_dgcnn_jax_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


def _find(filename: str, shared: str) -> pathlib.Path | None:
    """The first folder of ``DGCNN_DATA_DIR`` (``os.pathsep``-separated) or
    ``../shared/data/<shared>`` that holds ``filename``."""
    env = os.environ.get("DGCNN_DATA_DIR", "")
    candidates = [pathlib.Path(p) for p in env.split(os.pathsep) if p]
    candidates.append(SHARED / shared)
    for path in candidates:
        if (path / filename).is_file():
            return path
    return None


def data_dir() -> pathlib.Path | None:
    """The folder with real MedMNIST files (``breastmnist.npz``)."""
    return _find("breastmnist.npz", "medmnist")


@pytest.fixture
def medmnist_dir() -> pathlib.Path:
    path = data_dir()
    if path is None:
        pytest.skip("real MedMNIST files not found: set DGCNN_DATA_DIR to a folder with "
                    "breastmnist.npz and pneumoniamnist.npz (.ci/run points it at "
                    "../shared/data/medmnist)")
    return path


def _built(filename: str, shared: str, what: str) -> pathlib.Path:
    """The folder with the real ``filename``, or skip saying where to point."""
    path = _find(filename, shared)
    if path is None:
        pytest.skip(f"real {what} file not found: set DGCNN_DATA_DIR to include a folder "
                    f"with {filename} (.ci/run points it at ../shared/data/{shared})")
    return path


def _raw_sample(folder: pathlib.Path, filename: str, shared: str) -> pathlib.Path:
    """``raw_sample/`` (untouched source files) beside ``filename``, or skip."""
    path = folder / "raw_sample"
    if not path.is_dir():
        pytest.skip(f"raw_sample/ not found beside {folder / filename} (the shared data "
                    f"folder ../shared/data/{shared} has it)")
    return path


@pytest.fixture
def pbc_dir() -> pathlib.Path:
    """The folder with the real ``pbc28.npz`` (and, in the shared copy, ``raw_sample/``)."""
    return _built("pbc28.npz", "pbc", "PBC")


@pytest.fixture
def pbc_raw_sample(pbc_dir) -> pathlib.Path:
    """The 53 untouched official PBC files (``raw_sample/``) beside ``pbc28.npz``."""
    return _raw_sample(pbc_dir, "pbc28.npz", "pbc")


@pytest.fixture
def idc_dir() -> pathlib.Path:
    """The folder with the real ``idc50.npz`` (and, in the shared copy, ``raw_sample/``)."""
    return _built("idc50.npz", "idc", "IDC")


@pytest.fixture
def idc_raw_sample(idc_dir) -> pathlib.Path:
    """The 31 untouched Kaggle-layout IDC files (``raw_sample/``) beside ``idc50.npz``."""
    return _raw_sample(idc_dir, "idc50.npz", "idc")


def normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
