"""PBC blood cells: loading the real pbc28.npz, and building it from real official files."""

import hashlib
import os
import pathlib
import shutil

import numpy as np
import pytest

from dgcnn_jax import data
from dgcnn_jax.data import folder, pbc

# per-class counts of the published split (shared README)
TRAIN_COUNTS = [848, 2177, 1086, 2024, 850, 993, 2330, 1644]
TEST_COUNTS = [243, 622, 310, 579, 243, 284, 665, 469]


def test_load_real_pbc(pbc_dir):
    sizes = {}
    for split in ("train", "val", "test"):
        x, y = data.load("pbc", split, pbc_dir)
        assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (28, 28, 3)
        assert y.dtype == np.int32 and y.shape == (len(x),) and set(np.unique(y)) == set(range(8))
        sizes[split] = len(x)
        if split == "train":
            assert np.bincount(y).tolist() == TRAIN_COUNTS
        if split == "test":
            assert np.bincount(y).tolist() == TEST_COUNTS
    assert (sizes["train"], sizes["val"], sizes["test"]) == (11952, 1707, 3415)
    meta = data.info("pbc")
    assert meta.split_sizes == (11952, 1707, 3415) and meta.num_classes == 8
    assert meta.channels == 3 and meta.task == "multi-class"
    assert meta.classes == ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte",
                            "monocyte", "neutrophil", "platelet")
    with np.load(pbc_dir / "pbc28.npz") as archive:
        assert tuple(archive["classes"]) == meta.classes
    assert meta.licence == "CC BY 4.0" and "Acevedo" in meta.citation


def test_data_dir_search_path_and_environment(pbc_dir, medmnist_dir, monkeypatch):
    both = os.pathsep.join([str(medmnist_dir), str(pbc_dir)])
    monkeypatch.setenv("DGCNN_DATA_DIR", both)
    assert data.fetch("pbc") == pbc_dir / "pbc28.npz"  # found in the second folder
    assert data.fetch("breastmnist", download=False) == medmnist_dir / "breastmnist.npz"
    assert data.default_data_dir() == medmnist_dir  # downloads go to the first


def test_bad_or_missing_pbc_file_is_refused(pbc_dir, tmp_path):
    bad = tmp_path / "pbc28.npz"
    shutil.copy(pbc_dir / "pbc28.npz", bad)
    with open(bad, "r+b") as f:  # one byte changed
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    before = bad.read_bytes()
    with pytest.raises(data.ChecksumError, match="MD5 checksum mismatch.*rebuild it with"):
        data.load("pbc", "train", tmp_path)
    assert bad.read_bytes() == before  # the file is left as it was
    with pytest.raises(FileNotFoundError, match="not downloaded; build it .*prepare_data pbc"):
        data.load("pbc", "train", tmp_path / "empty")
    assert not (tmp_path / "empty").exists()  # nothing created


def _raw_sample_files(root: pathlib.Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_build_from_real_official_files(pbc_dir, pbc_raw_sample, tmp_path):
    # the sample is the untouched official files listed in raw_sample.sha256
    listed = {}
    for line in (pbc_dir / "raw_sample.sha256").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.removeprefix("./")] = digest
    assert _raw_sample_files(pbc_raw_sample) == listed and len(listed) == 53
    calls = []
    report = pbc.build(pbc_raw_sample, tmp_path / "out",
                       progress=lambda done, total: calls.append((done, total)))
    assert report.kept == 49 and sum(report.split_sizes) == 49
    assert report.dropped == {
        folder.NOT_IMAGE: ("neutrophil/.DS_169665.jpg",),
        folder.CONFLICT: ("eosinophil/EO_225902.jpg", "neutrophil/BNE_191112.jpg"),
        folder.COPY: ("basophil/BA_809918.jpg",)}  # a same-class copy: kept once
    assert report.skipped == ()  # every file is read, whatever its suffix
    assert calls[-1] == (53, 53) and len(calls) == 54  # each of 53 files, then done
    # no .part left; the report says the same as the returned one
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pbc28.npz",
                                                                   "pbc28.report.json"]
    written = folder.read_report(report.report_path)
    assert written["md5"] == report.md5 == data.medmnist.md5sum(report.path)
    assert written["dropped"] == {k: list(v) for k, v in report.dropped.items()}
    assert written["split_sizes"] == {"train": 33, "val": 8, "test": 8}
    # the bytes pbc.build wrote before it moved onto dgcnn_jax.data.folder (commit c87102c)
    assert report.md5 == "846928b20e520c679592d5ef83ddeea7"
    built = np.load(report.path)
    assert tuple(built["classes"]) == pbc.CLASSES
    # every image traces to its source file and equals the published file's image of it
    with np.load(pbc_dir / "pbc28.npz") as ref:
        published = {}
        for split in ("train", "val", "test"):
            for f, im, y in zip(ref[f"{split}_files"], ref[f"{split}_images"],
                                ref[f"{split}_labels"]):
                published[str(f)] = (im, int(y[0]))
    seen = []
    for split in ("train", "val", "test"):
        files, images = built[f"{split}_files"], built[f"{split}_images"]
        labels = built[f"{split}_labels"][:, 0]
        assert images.shape == (len(files), 28, 28, 3) and images.dtype == np.uint8
        assert list(labels) == sorted(labels)  # by class, then file name
        for f, im, y in zip(files, images, labels):
            f = str(f)
            assert f in listed and pbc.CLASSES[y] == f.split("/")[0]
            np.testing.assert_array_equal(im, published[f][0], err_msg=f)
            assert published[f][1] == y
            seen.append(f)
    assert len(set(seen)) == 49 and "basophil/BA_20201.jpg" in seen
    # the stratified split: round(70%) / round(10%) / rest of each class
    assert report.split_sizes == (33, 8, 8)


def test_interrupted_build_leaves_no_archive(pbc_raw_sample, tmp_path):
    def stop(done, total):
        if done == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pbc.build(pbc_raw_sample, tmp_path, progress=stop)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_build_leaves_nothing_the_next_one_keeps(pbc_raw_sample, tmp_path):
    """A SIGKILL while the archive is written leaves its temporary ``.part`` file: the next
    build removes it; the archive gets the mode of every other output (the umask's)."""
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".{pbc.FILENAME}.abc123.part"
    stale.write_bytes(b"half an archive")
    old = os.umask(0o022)
    try:
        report = pbc.build(pbc_raw_sample, out)
    finally:
        os.umask(old)
    assert sorted(p.name for p in out.iterdir()) == [pbc.FILENAME, "pbc28.report.json"]
    assert report.path.stat().st_mode & 0o777 == 0o644
    assert report.report_path.stat().st_mode & 0o777 == 0o644


def test_build_errors_name_the_path(pbc_raw_sample, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"root: {tmp_path} has no class folders"):
        pbc.build(tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        pbc.build(tmp_path / "missing", tmp_path / "out")
    root = tmp_path / "root"
    shutil.copytree(pbc_raw_sample / "basophil", root / "basophil")
    loop = root / "basophil" / "loop.jpg"
    os.symlink(loop, loop)  # a link to itself
    with pytest.raises(OSError, match=f"{loop}: cannot be read"):
        pbc.build(root, tmp_path / "out")
    loop.unlink()
    broken = root / "basophil" / "gone.jpg"
    os.symlink(tmp_path / "nowhere.jpg", broken)
    with pytest.raises(OSError, match=f"{broken}: cannot be read"):
        pbc.build(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_prepare_data_command(pbc_raw_sample, tmp_path, capsys):
    import subprocess
    import sys

    from experiments import prepare_data

    report = prepare_data.main(["pbc", "--root", str(pbc_raw_sample), "--data-dir",
                                str(tmp_path)])
    out = capsys.readouterr().out
    assert report.kept == 49 and "49 images of 28x28x3" in out
    assert "dropped 1: does not decode as an image" in out
    assert f"report: {tmp_path / 'pbc28.report.json'}" in out
    assert "DIFFERS FROM the published file" in out  # a sample is not the whole folder
    with pytest.raises(FileNotFoundError, match="root: .*nothing is not a folder"):
        prepare_data.main(["pbc", "--root", str(tmp_path / "nothing"), "--data-dir",
                           str(tmp_path)])
    done = subprocess.run([sys.executable, "-m", "experiments.prepare_data", "pbc", "--root",
                           str(tmp_path / "nothing"), "--data-dir", str(tmp_path)],
                          capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "error: root:" in done.stderr and "Traceback" not in done.stderr
