"""IDC breast histopathology: the real idc50.npz, its recipe on real Kaggle files, the
views the models see."""

import hashlib
import pathlib
import shutil

import numpy as np
import pytest

from dgcnn_jax import P4M, data
from dgcnn_jax.data import folder, idc

SIZES = {"train": 7162, "val": 768, "test": 2177}
PATIENTS = {"train": 195, "val": 28, "test": 56}


def test_load_real_idc(idc_dir):
    groups = {}
    for split in ("train", "val", "test"):
        x, y = data.load("idc", split, idc_dir)
        g = data.load_groups("idc", split, idc_dir)
        assert x.dtype == np.uint8 and x.shape == (SIZES[split], 50, 50, 3)
        assert y.dtype == np.int32 and y.shape == (len(x),) and set(np.unique(y)) == {0, 1}
        assert g.shape == (len(x),) and len(set(g.tolist())) == PATIENTS[split]
        assert list(g) == sorted(g)  # rows by patient
        groups[split] = set(g.tolist())
    # split by patient: no patient in two splits
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    meta = data.info("idc")
    assert meta.split_sizes == tuple(SIZES.values()) and meta.classes == ("non-IDC", "IDC")
    assert meta.num_classes == 2 and meta.channels == 3 and meta.task == "binary-class"
    assert meta.image_size == 50 and meta.view_size == 24 and meta.group_key == "patients"
    assert "Janowczyk" in meta.citation and "CC0" in meta.licence and "subset" in meta.caveat
    with pytest.raises(ValueError, match="breastmnist has no groups"):
        data.load_groups("breastmnist", "train")


def test_missing_or_bad_idc_file_names_the_build_command(idc_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="not downloaded; build it with `python -m "
                                                "experiments.prepare_data idc --root"):
        data.load("idc", "train", tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing downloaded, nothing created
    bad = tmp_path / "idc50.npz"
    shutil.copy(idc_dir / "idc50.npz", bad)
    with open(bad, "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(data.ChecksumError, match="rebuild it with `python -m experiments"
                                                 ".prepare_data idc"):
        data.load("idc", "test", tmp_path)


def _published(idc_dir):
    found = {}
    with np.load(idc_dir / "idc50.npz") as ref:
        for split in ("train", "val", "test"):
            for f, im, y, g in zip(ref[f"{split}_files"], ref[f"{split}_images"],
                                   ref[f"{split}_labels"], ref[f"{split}_patients"]):
                found[str(f)] = (im, int(y[0]), int(g))
    return found


def test_recipe_on_real_kaggle_files(idc_dir, idc_raw_sample, tmp_path):
    listed = dict(reversed(line.split(maxsplit=1)) for line in
                  (idc_dir / "raw_sample.sha256").read_text().splitlines())
    here = {p.relative_to(idc_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in idc_raw_sample.rglob("*") if p.is_file()}
    assert {k.removeprefix("./"): v for k, v in listed.items()} == here and len(here) == 31
    report = idc.build(idc_raw_sample, tmp_path)
    assert report.kept == 28 and report.dropped.keys() == {folder.WRONG_SIZE}
    assert len(report.dropped[folder.WRONG_SIZE]) == 3
    assert report.split_sizes[1] == 0 and report.split_groups == (4, 0, 1)
    published = _published(idc_dir)
    built = np.load(report.path)
    assert list(built.keys()) == [f"{s}_{k}" for s in ("train", "val", "test")
                                  for k in ("images", "labels", "patients", "files")] + [
                                      "classes"]
    seen = 0
    for split in ("train", "val", "test"):
        for f, im, y, g in zip(built[f"{split}_files"], built[f"{split}_images"],
                               built[f"{split}_labels"][:, 0], built[f"{split}_patients"]):
            want = published[str(f)]  # every kept file is in the published archive
            np.testing.assert_array_equal(im, want[0], err_msg=str(f))
            assert (int(y), int(g)) == want[1:]
            seen += 1
    assert seen == 28
    for name in report.dropped[folder.WRONG_SIZE]:  # the edge patches
        assert name not in published


@pytest.mark.slow
def test_recipe_rebuilds_the_published_archive_byte_for_byte(idc_dir, idc_raw_sample,
                                                             tmp_path):
    """The Kaggle-layout folder of all 10,107 published patches (each written back as a
    PNG, the 31 original files and 3 edge patches of the raw sample in place of theirs)
    builds an archive with the published MD5: files, patients, split and order."""
    from PIL import Image

    root = tmp_path / "kaggle"
    for name, (image, _, _) in _published(idc_dir).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, compress_level=0)
    shutil.copytree(idc_raw_sample, root, dirs_exist_ok=True)
    report = idc.build(root, tmp_path / "out")
    assert report.split_sizes == tuple(SIZES.values())
    assert report.split_groups == tuple(PATIENTS.values())
    assert report.md5 == idc.MD5 == data.medmnist.md5sum(idc_dir / "idc50.npz")


def test_views_commute_with_every_rotation_and_mirror(idc_dir):
    x, _ = data.load("idc", "val", idc_dir)
    x = x[:16]
    assert data.view_geometry(50, 24) == (48, 2) and data.view_geometry(50, 48) == (48, 1)
    assert data.view_geometry(28, 28) == (28, 1) and data.view_geometry(50, 25) == (50, 2)
    for size in (24, 48, 16):
        view = data.center_view(x, size)
        assert view.shape == (16, size, size, 3) and view.dtype == np.uint8
        for g in range(P4M.order):
            moved = np.ascontiguousarray(P4M.transform_image(x, g))
            np.testing.assert_array_equal(data.center_view(moved, size),
                                          P4M.transform_image(view, g), err_msg=f"{size} {g}")
    # the 24 px view is the mean of each 2x2 block of the centre crop, rounded half up;
    # likewise 3x3 blocks (16 px) and 16x16 blocks (3 px: sums past uint16)
    for size, f in ((24, 2), (16, 3), (3, 16)):
        block = x[:, 1:49, 1:49].astype(np.int64).reshape(16, size, f, size, f, 3).sum(
            axis=(2, 4))
        np.testing.assert_array_equal(data.center_view(x, size), (block + f * f // 2) // (f * f))
    np.testing.assert_array_equal(data.center_view(x, 48), x[:, 1:49, 1:49])
    # negative control: an off-centre crop does not commute with a quarter turn
    off = x[:, 0:48, 0:48]
    assert not np.array_equal(np.rot90(off, 1, axes=(1, 2)),
                              np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2)))[:, 0:48, 0:48])
    for bad in (0, 51, 2.5, True):
        with pytest.raises(ValueError, match="input_size"):
            data.view_geometry(50, bad)
    with pytest.raises(ValueError, match="input_size: 49 cannot be a centred view"):
        data.view_geometry(50, 49)
    with pytest.raises(ValueError, match="images: expected uint8"):
        data.center_view(x.astype(np.float32), 24)
