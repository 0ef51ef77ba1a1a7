"""The folder-to-dataset builder on a generated tree: formats, bad files, duplicates,
groups that never straddle splits, the written report, and training on the result."""

import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from dgcnn_jax import data
from dgcnn_jax.data import folder

from .training_helpers import run_train

PATIENTS = [f"p{i:02d}" for i in range(12)]


def _image_bytes(seed, fmt, size=16):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG"
                                                         else {}))
    return buffer.getvalue()


def _tree(root: pathlib.Path) -> dict:
    """``ROOT/<class>/<patient>_<n>.<ext>``: 12 patients with PNG and JPEG images of both
    classes, and the files a builder must drop. Returns what the report must say."""
    seed = 0
    for i, patient in enumerate(PATIENTS):
        for cls in ("benign", "malignant"):
            for n in range(2 + i % 3):
                seed += 1
                fmt, ext = ("PNG", "png") if n % 2 == 0 else ("JPEG", "jpg")
                path = root / cls / f"{patient}_{n}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_image_bytes(seed, fmt))
    (root / "benign" / "p00_corrupt.png").write_bytes(_image_bytes(999, "PNG")[:60])
    (root / "malignant" / "p01_text.jpg").write_text("not an image")
    (root / "benign" / "p02_notes.txt").write_text("a note, skipped by its suffix")
    twin = _image_bytes(1000, "PNG")  # one image under both labels: every copy dropped
    (root / "benign" / "p03_twin.png").write_bytes(twin)
    (root / "malignant" / "p04_twin.png").write_bytes(twin)
    copy = _image_bytes(1001, "PNG")  # the same image twice under one label: kept once
    (root / "benign" / "p05_a.png").write_bytes(copy)
    (root / "benign" / "p05_b.png").write_bytes(copy)
    (root / "malignant" / "nogroup.png").write_bytes(_image_bytes(1002, "PNG"))
    (root / "malignant" / "p06_big.png").write_bytes(_image_bytes(1003, "PNG", size=20))
    return {folder.NOT_IMAGE: ["benign/p00_corrupt.png", "malignant/p01_text.jpg"],
            folder.CONFLICT: ["benign/p03_twin.png", "malignant/p04_twin.png"],
            folder.COPY: ["benign/p05_b.png"],
            folder.NO_GROUP: ["malignant/nogroup.png"],
            folder.WRONG_SIZE: ["malignant/p06_big.png"]}


RECIPE = folder.Recipe(name="tumours", group_pattern=r"^[a-z]+/(p\d+)_",
                       require_size=(16, 16), group_key="patients")


def test_folder_build_does_what_its_report_says(tmp_path):
    root = tmp_path / "images"
    expected = _tree(root)
    images = sum(2 * (2 + i % 3) for i in range(len(PATIENTS)))
    report = folder.build(root, tmp_path / "data", RECIPE)
    assert {k: sorted(v) for k, v in report.dropped.items()} == expected
    assert report.skipped == ("benign/p02_notes.txt",)
    assert report.kept == images + 1  # the generated images and one copy of the pair
    assert report.classes == ("benign", "malignant") and report.image_shape == (16, 16, 3)
    written = json.loads(report.report_path.read_text())
    assert {k: sorted(v) for k, v in written["dropped"].items()} == expected
    assert written["kept"] == report.kept and written["md5"] == report.md5
    # every kept image is the decoded file, and each patient lies in one split only
    where = {}
    total = 0
    for split in ("train", "val", "test"):
        x, y = data.load("tumours", split, tmp_path / "data")
        groups = data.load_groups("tumours", split, tmp_path / "data")
        assert x.shape[1:] == (16, 16, 3) and len(groups) == len(x)
        with np.load(report.path) as archive:
            files = archive[f"{split}_files"]
        for name, image, label, group in zip(files, x, y, groups):
            name = str(name)
            assert name.startswith(("benign/", "malignant/"))
            assert label == (0 if name.startswith("benign/") else 1)
            assert group == name.split("/")[1].split("_")[0]
            with Image.open(root / name) as im:
                np.testing.assert_array_equal(image, np.asarray(im.convert("RGB")))
            assert where.setdefault(str(group), split) == split, f"{group} straddles splits"
        total += len(x)
    assert total == report.kept
    # 12 patients (the pair's copy belongs to p05): 8 / 1 / 3 by round(0.7 n), round(0.1 n)
    assert report.split_groups == (8, 1, 3)
    assert sorted(where) == PATIENTS
    meta = data.info("tumours", tmp_path / "data")
    assert meta.classes == ("benign", "malignant") and meta.md5 == report.md5
    assert meta.split_sizes == report.split_sizes and meta.group_key == "patients"
    assert meta.image_size == 16 and meta.channels == 3 and meta.task == "binary-class"


def test_folder_layouts_grayscale_crop_and_stratified_split(tmp_path):
    root = tmp_path / "by_group"
    for g, patient in enumerate(["7", "10", "2"]):  # numeric groups in numeric order
        for cls in ("0", "1"):
            for n in range(5):
                path = root / patient / cls / f"{n}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_image_bytes(100 * g + 10 * int(cls) + n, "PNG", size=20))
    recipe = folder.Recipe(name="grey", layout="group/class", mode="L", crop=12, size=6,
                           fractions=(0.4, 0.3, 0.3), seed=3)
    report = folder.build(root, tmp_path / "out", recipe)
    assert report.image_shape == (6, 6, 1) and report.kept == 30
    with np.load(report.path) as archive:
        groups = np.concatenate([archive[f"{s}_groups"] for s in ("train", "val", "test")])
        assert archive["train_groups"].dtype == np.int32  # numeric ids stay numbers
        image = archive["train_images"][0]
        name = str(archive["train_files"][0])
    assert report.split_groups == (1, 1, 1) and sorted(set(groups.tolist())) == [2, 7, 10]
    with Image.open(root / name) as im:  # crop 4..16, then 12 -> 6 by area
        want = im.convert("L").crop((4, 4, 16, 16)).resize((6, 6), Image.BOX)
    np.testing.assert_array_equal(image[..., 0], np.asarray(want))
    # without groups: each class split on its own (round 70% / 10% / rest)
    flat = folder.build(root / "7", tmp_path / "flat", folder.Recipe(name="flat"))
    assert flat.split_sizes == (8, 0, 2) and flat.split_groups == (0, 0, 0)
    with np.load(flat.path) as archive:
        assert "train_groups" not in archive and list(archive)[-1] == "classes"


def test_folder_build_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"root: {tmp_path} has no class folders"):
        folder.build(tmp_path, tmp_path / "out", folder.Recipe(name="x"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        folder.build(tmp_path / "missing", tmp_path / "out", folder.Recipe(name="x"))
    root = tmp_path / "root"
    for cls, size in (("a", 16), ("b", 20)):
        (root / cls).mkdir(parents=True)
        for n in range(3):
            (root / cls / f"{n}.png").write_bytes(_image_bytes(n, "PNG", size=size))
    with pytest.raises(ValueError, match=r"/b/0.png: image of shape \(20, 20, 3\), most "
                                         r"others \(16, 16, 3\)|/a/0.png: image of shape"):
        folder.build(root, tmp_path / "out", folder.Recipe(name="x"))
    with pytest.raises(ValueError, match="class_names: 1 names for the 2 class folders a, b"):
        folder.build(root, tmp_path / "out", folder.Recipe(name="x", class_names=("a",)))
    with pytest.raises(ValueError, match="no image of .* was kept"):
        folder.build(root, tmp_path / "out", folder.Recipe(name="x", extensions=(".jpg",)))
    assert not (tmp_path / "out").exists()  # nothing written by a refused build
    for bad, match in ((dict(group_pattern="("), "group_pattern: not a regular expression"),
                       (dict(group_pattern="p"), "group_pattern: needs a capture group"),
                       (dict(fractions=(0.5, 0.5, 0.5)), "fractions: expected three"),
                       (dict(layout="flat"), "layout: expected one of"),
                       (dict(mode="CMYK"), "mode: expected 'RGB' or 'L'"),
                       (dict(crop=0), "crop: expected a positive int"),
                       (dict(name="../x"), "name: expected letters")):
        with pytest.raises(ValueError, match=match):
            folder.Recipe(**{"name": "x", **bad})


@pytest.mark.slow
def test_a_built_folder_trains_like_a_built_in_dataset(tmp_path):
    root = tmp_path / "images"
    _tree(root)
    from experiments import prepare_data

    report = prepare_data.main([
        "folder", "--root", str(root), "--name", "tumours", "--data-dir",
        str(tmp_path / "data"), "--group-pattern", r"^[a-z]+/(p\d+)_", "--require-size", "16",
        "--group-key", "patients"])
    assert report.md5 == folder.build(root, tmp_path / "again", RECIPE).md5  # CLI = recipe
    done = run_train(tmp_path / "run", tmp_path / "elsewhere", [
        "dataset=tumours", f"data_dir={tmp_path / 'data'}", "model=cnn", "epochs=1",
        "batch_size=8", "progress=false"])
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["finished"] and results["input_size"] == 16
    assert results["test"]["num_examples"] == report.split_sizes[2]
    assert "auc_per_group" in results["test"]  # the groups (patients) were read
    assert results["classes"] == ["benign", "malignant"]
