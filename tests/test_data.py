"""MedMNIST loading (real files), download against a local server, grain pipelines."""

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from dgcnn_jax import data
from dgcnn_jax.data import medmnist

EXPECTED = {
    "breastmnist": {"train": (546, [147, 399]), "val": (78, [21, 57]), "test": (156, [42, 114])},
    "pneumoniamnist": {"train": (4708, [1214, 3494]), "val": (524, [135, 389]),
                       "test": (624, [234, 390])},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_real_files_shapes_sizes_classes_range(name, split, medmnist_dir):
    images, labels = data.load(name, split, medmnist_dir, download=False)
    size, counts = EXPECTED[name][split]
    assert images.shape == (size, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (size,) and labels.dtype == np.int32
    assert np.bincount(labels).tolist() == counts
    assert images.min() < 20 and images.max() > 200  # uint8 grey levels, full spread
    assert data.info(name).split_sizes[["train", "val", "test"].index(split)] == size


@contextlib.contextmanager
def serve(folder):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{{name}}.npz"
    finally:
        server.shutdown()
        server.server_close()


def test_download_from_local_server(medmnist_dir, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(medmnist_dir / "breastmnist.npz", served / "breastmnist.npz")
    cache = tmp_path / "cache"
    with serve(served) as url:
        path = data.fetch("breastmnist", cache, url=url)
    assert path == cache / "breastmnist.npz"
    assert medmnist.md5sum(path) == data.info("breastmnist").md5
    assert sorted(p.name for p in cache.iterdir()) == ["breastmnist.npz"]  # no temp files
    images, _ = data.load("breastmnist", "val", cache, download=False)
    assert images.shape == (78, 28, 28, 1)


def test_corrupted_download_is_refused_and_not_written(medmnist_dir, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    raw = bytearray((medmnist_dir / "breastmnist.npz").read_bytes())
    raw[1000] ^= 0xFF
    (served / "breastmnist.npz").write_bytes(bytes(raw))
    cache = tmp_path / "cache"
    with serve(served) as url:
        with pytest.raises(data.ChecksumError) as info:
            data.fetch("breastmnist", cache, url=url)
    message = str(info.value)
    assert "breastmnist" in message and data.info("breastmnist").md5 in message
    assert "got " in message
    assert list(cache.iterdir()) == []


def test_corrupted_local_file_is_never_used(medmnist_dir, tmp_path):
    raw = bytearray((medmnist_dir / "breastmnist.npz").read_bytes())
    raw[-10] ^= 0x01
    (tmp_path / "breastmnist.npz").write_bytes(bytes(raw))
    with pytest.raises(data.ChecksumError, match="MD5 checksum mismatch"):
        data.load("breastmnist", "train", tmp_path, download=False)


def test_missing_file_without_network_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"put the official breastmnist.npz \(MD5 "
                                                r"750601b1f35ba3300ea97c75c52ff8f6"):
        data.fetch("breastmnist", tmp_path, download=False)
    # an address that refuses connections stands for "no network"
    with pytest.raises(FileNotFoundError, match="downloading .* failed"):
        data.fetch("breastmnist", tmp_path, url="http://127.0.0.1:9/{name}.npz", timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_read_only_data_directory_says_so(tmp_path, monkeypatch):
    # (tests may run as root, for whom chmod does not make a folder read-only: the refusal
    # to create a file there is simulated)
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(medmnist.tempfile, "mkstemp", refuse)
    with pytest.raises(FileNotFoundError, match=r"is not writable \(Permission denied\): put "
                                                r"the official breastmnist.npz"):
        data.fetch("breastmnist", tmp_path, url="http://127.0.0.1:9/{name}.npz", timeout=5)


def test_unknown_names_and_splits():
    with pytest.raises(ValueError,
                       match="unknown dataset 'brainmnist'.*breastmnist.*prepare_data folder"):
        data.load("brainmnist")
    with pytest.raises(ValueError, match="split: expected one of train, val, test"):
        data.load("breastmnist", "validation")


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("DGCNN_DATA_DIR", str(tmp_path / "env"))
    assert data.default_data_dir() == tmp_path / "env"
    assert data.default_data_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("DGCNN_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_data_dir() == tmp_path / "xdg" / "dgcnn_jax" / "medmnist"


def _toy():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (50, 6, 6, 1), dtype=np.uint8),
            rng.integers(0, 2, 50).astype(np.int32))


def test_pipeline_batches_values_and_determinism():
    images, labels = _toy()
    mean, std = data.normalization_stats(images)
    kwargs = dict(batch_size=8, mean=mean, std=std, seed=3, augment=True)
    a = list(data.epoch_dataset(images, labels, epoch=1, **kwargs))
    b = list(data.epoch_dataset(images, labels, epoch=1, **kwargs))
    c = list(data.epoch_dataset(images, labels, epoch=2, **kwargs))
    assert len(a) == 6 == data.num_batches(50, 8, True)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(a[0]["label"], c[0]["label"]) or not np.array_equal(
        a[0]["image"], c[0]["image"])
    assert a[0]["image"].dtype == np.float32 and a[0]["image"].shape == (8, 6, 6, 1)
    # without shuffling or augmentation: exact normalised values, all examples
    plain = list(data.epoch_dataset(images, labels, batch_size=8, mean=mean, std=std,
                                    shuffle=False, drop_remainder=False))
    assert len(plain) == 7 and plain[-1]["image"].shape[0] == 2
    stacked = np.concatenate([p["image"] for p in plain])
    np.testing.assert_allclose(stacked, (images / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    assert abs(stacked.mean()) < 1e-4 and abs(stacked.std() - 1) < 1e-3


def test_augmentation_applies_d4_elements():
    images, labels = _toy()
    batches = list(data.epoch_dataset(images, labels, batch_size=50, mean=0.0, std=1.0,
                                      shuffle=False, augment=True, seed=0))
    out = np.round(batches[0]["image"] * 255).astype(np.uint8)
    from dgcnn_jax import P4M
    seen = set()
    for i in range(50):
        matches = [g for g in range(8)
                   if np.array_equal(P4M.transform_image(images[i], g, axes=(0, 1)), out[i])]
        assert matches, "every augmented image is a D4 transform of its source"
        seen.add(matches[0])
    assert len(seen) > 4


def test_iterator_state_restores_the_next_batch():
    images, labels = _toy()
    ds = data.epoch_dataset(images, labels, batch_size=4, mean=0.5, std=0.25, seed=7,
                            augment=True)
    it = data.epoch_iterator(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = next(it)
    resumed = data.epoch_iterator(ds, state)
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], expected["image"])
    np.testing.assert_array_equal(got["label"], expected["label"])


def test_stratified_subset_is_seeded_nested_and_per_class():
    labels = np.repeat(np.arange(4), [100, 40, 7, 1])
    half = data.stratified_subset(labels, 0.5, seed=3)
    assert np.array_equal(half, data.stratified_subset(labels, 0.5, seed=3))  # seeded
    assert not np.array_equal(half, data.stratified_subset(labels, 0.5, seed=4))
    assert np.array_equal(np.bincount(labels[half]), [50, 20, 4, 1])  # round, >= 1 per class
    assert np.all(np.diff(half) > 0)  # sorted, no repeats
    small = data.stratified_subset(labels, 0.1, seed=3)
    assert np.array_equal(np.bincount(labels[small]), [10, 4, 1, 1])
    assert set(small) <= set(half)  # one seed: a smaller fraction lies inside a larger one
    assert np.array_equal(data.stratified_subset(labels, 1.0), np.arange(len(labels)))
    for fraction in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fraction: expected a number in"):
            data.stratified_subset(labels, fraction)
    with pytest.raises(ValueError, match="labels: expected int"):
        data.stratified_subset(labels.reshape(-1, 1), 0.5)


def test_pipeline_errors():
    images, labels = _toy()
    with pytest.raises(ValueError, match="labels: expected 50 labels"):
        data.epoch_dataset(images, labels[:3], batch_size=4, mean=0, std=1)
    with pytest.raises(ValueError, match="batch_size"):
        data.epoch_dataset(images, labels, batch_size=0, mean=0, std=1)


def test_no_tensorflow_import(medmnist_dir):
    code = (
        "import sys, numpy as np\n"
        "from dgcnn_jax import data, models\n"
        "x, y = data.load('breastmnist', 'val', sys.argv[1], download=False)\n"
        "m, s = data.normalization_stats(x)\n"
        "b = next(iter(data.epoch_dataset(x, y, batch_size=8, mean=m, std=s, augment=True)))\n"
        "assert b['image'].shape == (8, 28, 28, 1)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code, str(medmnist_dir)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_device_epoch_order_is_keyed_by_seed_and_epoch():
    import jax

    first = np.asarray(data.epoch_batches(data.epoch_key(0, 3), 103, 10))
    assert first.shape == (10, 10) and first.dtype == np.int32
    assert len(np.unique(first)) == 100 and first.min() >= 0 and first.max() < 103
    np.testing.assert_array_equal(first, data.epoch_batches(data.epoch_key(0, 3), 103, 10))
    assert not np.array_equal(first, data.epoch_batches(data.epoch_key(0, 4), 103, 10))
    assert not np.array_equal(first, data.epoch_batches(data.epoch_key(1, 3), 103, 10))
    traced = jax.jit(lambda s, e: data.epoch_batches(data.epoch_key(s, e), 103, 10))(0, 3)
    np.testing.assert_array_equal(first, traced)
    with pytest.raises(ValueError, match="batch_size: 200 exceeds the 103 examples"):
        data.epoch_batches(data.epoch_key(0, 0), 103, 200)


def test_step_batches_walk_through_passes_across_epoch_boundaries():
    import jax

    n, b = 103, 10  # 10 full batches per pass, 3 examples dropped per pass
    passes = [np.asarray(data.epoch_batches(data.pass_key(7, p), n, b)) for p in range(4)]
    every = np.concatenate(passes)
    for order in passes:  # each pass a permutation without repeats
        assert len(np.unique(order)) == 100
    assert not np.array_equal(passes[0], passes[1])
    # an epoch of one pass is that pass, whose key is the split of epoch_key(seed, epoch)
    # the trainer drew its one-pass epochs from (runs stored before keep their order)
    key = jax.random.split(data.epoch_key(7, 2))[0]
    np.testing.assert_array_equal(data.step_batches(7, 20, n, b, 10),
                                  data.epoch_batches(key, n, b))
    # epochs of 13, 4 and 17 steps continue where the previous one stopped
    starts, lengths = (0, 13, 17), (13, 4, 17)
    got = np.concatenate([data.step_batches(7, s, n, b, k) for s, k in zip(starts, lengths)])
    np.testing.assert_array_equal(got, every[:34])
    traced = jax.jit(lambda seed, first: data.step_batches(seed, first, n, b, 17))(7, 17)
    np.testing.assert_array_equal(traced, every[17:34])
    assert not np.array_equal(data.step_batches(8, 0, n, b, 10), passes[0])
    with pytest.raises(ValueError, match="batch_size: 200 exceeds the 103 examples"):
        data.step_batches(0, 0, n, 200, 1)


def test_device_augmentation_applies_each_d4_element():
    import jax

    from dgcnn_jax.groups import P4M

    images = np.random.default_rng(0).integers(0, 256, (512, 5, 5, 2), dtype=np.uint8)
    out = np.asarray(data.random_d4_batch(jax.random.key(0), images))
    assert out.dtype == np.uint8 and out.shape == images.shape
    used = []
    for x, y in zip(images, out):
        matches = [g for g in range(P4M.order)
                   if np.array_equal(P4M.transform_image(x, g, axes=(0, 1)), y)]
        assert matches, "an output image is no D4 transform of its input"
        used.append(matches[0])
    counts = np.bincount(used, minlength=P4M.order)
    assert counts.min() > 30, counts  # every element drawn (64 expected each)
    with pytest.raises(ValueError, match="square images"):
        data.random_d4_batch(jax.random.key(0), images[:, :4])


def test_device_normalisation_equals_the_host_pipeline():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (16, 4, 4, 3), dtype=np.uint8)
    mean, std = data.normalization_stats(images)
    host = next(iter(data.epoch_dataset(images, np.zeros(16, np.int32), batch_size=16,
                                        mean=mean, std=std, shuffle=False)))["image"]
    np.testing.assert_array_equal(np.asarray(data.normalize(images, mean, std)), host)


def test_a_shard_holds_its_rows_of_every_batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (70, 4, 4, 1), dtype=np.uint8)
    labels = np.arange(70, dtype=np.int32)
    mean, std = data.normalization_stats(images)
    kwargs = dict(batch_size=8, mean=mean, std=std, epoch=3, seed=5, augment=True)
    whole = list(data.epoch_dataset(images, labels, **kwargs))
    parts = [list(data.epoch_dataset(images, labels, shard=(i, 2), **kwargs)) for i in (0, 1)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 8
    for b, (p0, p1) in zip(whole, zip(*parts)):  # same examples, order and augmentation
        np.testing.assert_array_equal(np.concatenate([p0["label"], p1["label"]]), b["label"])
        np.testing.assert_array_equal(np.concatenate([p0["image"], p1["image"]]), b["image"])
    for bad in ((2, 2), (0, 3)):
        with pytest.raises(ValueError, match="shard: expected"):
            data.epoch_dataset(images, labels, shard=bad, **kwargs)
