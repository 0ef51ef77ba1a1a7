"""PCam and BreakHis builders: prepared without TensorFlow, read with tfds.data_source."""

import gzip
import io
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(code, *args):
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _write_pcam_manual_dir(folder: pathlib.Path, sizes=(12, 4, 5)):
    import h5py

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    expected = {}
    for split, n in zip(("train", "valid", "test"), sizes):
        x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        y = rng.integers(0, 2, (n, 1, 1, 1), dtype=np.uint8)
        for name, array in (("x", x), ("y", y)):
            buf = io.BytesIO()
            with h5py.File(buf, "w") as f:
                f.create_dataset(name, data=array)
            path = folder / f"camelyonpatch_level_2_split_{split}_{name}.h5.gz"
            path.write_bytes(gzip.compress(buf.getvalue()))
        expected[split] = (x, y.reshape(-1))
    return expected


def test_pcam_offline_preparation_and_data_source(tmp_path):
    expected = _write_pcam_manual_dir(tmp_path / "manual")
    code = (
        "import sys, numpy as np\n"
        "from dgcnn_jax.data import tfds_sources\n"
        "tfds_sources.prepare_pcam(sys.argv[1], sys.argv[2])\n"
        "for split in ('train', 'validation', 'test'):\n"
        "    src = tfds_sources.pcam_source(split, sys.argv[1])\n"
        "    xs = np.stack([src[i]['image'] for i in range(len(src))])\n"
        "    ys = np.array([src[i]['label'] for i in range(len(src))])\n"
        "    np.savez(f'{sys.argv[1]}/{split}.npz', x=xs, y=ys)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "print('ok')\n")
    assert _run(code, tmp_path / "tfds", tmp_path / "manual").strip().endswith("ok")
    for split, ours in (("train", "train"), ("validation", "valid"), ("test", "test")):
        got = np.load(tmp_path / "tfds" / f"{split}.npz")
        x, y = expected[ours]
        # array_record order differs from the file order: compare as sets of examples
        order_got = np.lexsort(got["x"].reshape(len(x), -1).T[:16])
        order_exp = np.lexsort(x.reshape(len(x), -1).T[:16])
        np.testing.assert_array_equal(got["x"][order_got], x[order_exp])
        np.testing.assert_array_equal(got["y"][order_got], y[order_exp])


def test_pcam_missing_preparation_says_what_to_run(tmp_path):
    from dgcnn_jax.data import tfds_sources

    with pytest.raises(FileNotFoundError, match="python -m experiments.prepare_data pcam "
                                                "--data-dir"):
        tfds_sources.pcam_source("train", tmp_path)
    with pytest.raises(ValueError, match="split: expected one of train, validation, test"):
        tfds_sources.pcam_source("val", tmp_path)


def test_pcam_mock_data_through_data_source_and_grain():
    code = (
        "import sys, numpy as np, tensorflow_datasets as tfds\n"
        "from dgcnn_jax import data\nfrom dgcnn_jax.data import tfds_sources\n"
        "with tfds.testing.mock_data(num_examples=10,\n"
        "                            policy=tfds.testing.MockPolicy.USE_CODE):\n"
        "    src = tfds.data_source('dgcnn_patch_camelyon', split='train')\n"
        "    ex = src[0]\n"
        "    assert ex['image'].shape == (96, 96, 3) and ex['image'].dtype == np.uint8\n"
        "    ds = data.source_dataset(src, batch_size=4, mean=0.5, std=0.25)\n"
        "    batches = list(ds)\n"
        "    assert len(batches) == 2 and batches[0]['image'].shape == (4, 96, 96, 3)\n"
        "assert 'tensorflow' not in sys.modules\n"
        "print('ok')\n")
    assert _run(code).strip().endswith("ok")


def _write_breakhis_tree(root: pathlib.Path):
    from PIL import Image

    rng = np.random.default_rng(1)
    count = 0
    for cls, patients in (("benign", 6), ("malignant", 8)):
        for p in range(patients):
            for mag in ("40X", "100X"):
                folder = root / cls / f"{cls[:1]}-{p:02d}" / mag
                folder.mkdir(parents=True)
                for i in range(2):
                    Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(
                        folder / f"img{i}.png")
                    count += 1
    return count


def test_breakhis_builder_splits_by_patient(tmp_path):
    total = _write_breakhis_tree(tmp_path / "tree")
    code = (
        "import sys, io, json, numpy as np\n"
        "from PIL import Image\n"
        "from dgcnn_jax.data import tfds_sources\n"
        "tfds_sources.prepare_breakhis(sys.argv[1], sys.argv[2], seed=0)\n"
        "out = {}\n"
        "for split in ('train', 'validation', 'test'):\n"
        "    src = tfds_sources.breakhis_source(split, sys.argv[2])\n"
        "    rows = [src[i] for i in range(len(src))]\n"
        "    out[split] = [(r['class_name'].decode(), r['patient'].decode(), int(r['label']),\n"
        "                   np.asarray(Image.open(io.BytesIO(r['image_png']))).shape)\n"
        "                  for r in rows]\n"
        "assert 'tensorflow' not in sys.modules\n"
        "print(json.dumps(out))\n")
    import json

    out = json.loads(_run(code, tmp_path / "tree", tmp_path / "tfds").strip().splitlines()[-1])
    patients = {s: {(c, p) for c, p, _, _ in rows} for s, rows in out.items()}
    assert not patients["train"] & patients["validation"]
    assert not patients["train"] & patients["test"]
    assert not patients["validation"] & patients["test"]
    assert sum(len(rows) for rows in out.values()) == total
    for rows in out.values():
        assert {c for c, _, _, _ in rows} == {"benign", "malignant"}  # stratified
        assert all(shape == [10, 14, 3] for _, _, _, shape in rows)
        assert all(label == (c == "malignant") for c, _, label, _ in rows)


def test_breakhis_errors(tmp_path):
    from dgcnn_jax.data import tfds_sources

    with pytest.raises(FileNotFoundError, match="does not exist"):
        tfds_sources.breakhis_patient_splits(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="prepare_data breakhis --root"):
        tfds_sources.breakhis_source("train", tmp_path)


def test_breakhis_folder_mistakes_are_refused(tmp_path):
    """Cases that used to give a silent leak, a wrong split or a bare OSError."""
    from dgcnn_jax.data import tfds_sources

    root = tmp_path / "tree"
    _write_breakhis_tree(root)
    # upper-case extensions count as PNGs
    png = next((root / "benign" / "b-00" / "40X").glob("*.png"))
    png.rename(png.with_suffix(".PNG"))
    splits = tfds_sources.breakhis_patient_splits(root)
    assert sum(len(p) for p in splits.values()) == 14
    # 3 to 5 patients: every split still gets each class (no empty validation split)
    for n in (3, 4, 5):
        small = tmp_path / f"small{n}"
        for cls in ("benign", "malignant"):
            for p in range(n):
                folder = small / cls / f"p{p}" / "40X"
                folder.mkdir(parents=True)
                shutil.copy(png.with_suffix(".PNG"), folder / "a.png")
        parts = tfds_sources.breakhis_patient_splits(small)
        for split in ("train", "validation", "test"):
            assert {c for c, _ in parts[split]} == {"benign", "malignant"}, (n, parts)
    # a class with fewer patients than splits
    shutil.rmtree(tmp_path / "small3" / "benign" / "p2")
    shutil.rmtree(tmp_path / "small3" / "benign" / "p1")
    with pytest.raises(ValueError, match="every class needs at least 3 patients .* benign has 1"):
        tfds_sources.breakhis_patient_splits(tmp_path / "small3")
    # a symbolic link to a patient folder: one patient counted twice
    os.symlink(root / "benign" / "b-01", root / "benign" / "b-99")
    with pytest.raises(ValueError, match="are the same folder"):
        tfds_sources.breakhis_patient_splits(root)
    os.remove(root / "benign" / "b-99")
    # symbolic link loops (one entry, and two entries pointing at each other) are not
    # folders: skipped, the split is the same
    os.symlink(root / "benign" / "loop", root / "benign" / "loop")
    os.symlink(root / "malignant" / "b", root / "malignant" / "a")
    os.symlink(root / "malignant" / "a", root / "malignant" / "b")
    os.symlink(root / "malignant", root / "malignant" / "m-00" / "40X" / "up")
    assert tfds_sources.breakhis_patient_splits(root) == splits
    # a text file named .png
    (root / "malignant" / "m-00" / "40X" / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png is not a PNG image"):
        tfds_sources.breakhis_patient_splits(root)


def test_breakhis_prepared_with_another_seed_is_refused(tmp_path):
    root = tmp_path / "tree"
    _write_breakhis_tree(root)
    code = ("import sys\n"
            "from dgcnn_jax.data import tfds_sources\n"
            "tfds_sources.prepare_breakhis(sys.argv[1], sys.argv[2], seed=0)\n"
            "tfds_sources.prepare_breakhis(sys.argv[1], sys.argv[2], seed=0)  # no-op\n"
            "try:\n"
            "    tfds_sources.prepare_breakhis(sys.argv[1], sys.argv[2], seed=1)\n"
            "except ValueError as err:\n"
            "    print(err)\n")
    out = _run(code, root, tmp_path / "tfds")
    assert "seed: dgcnn_breakhis in" in out and "was prepared with seed 0, not 1" in out
