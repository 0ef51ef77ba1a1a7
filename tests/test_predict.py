"""Training on IDC from the command line, and predictions for new image files."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dgcnn_jax import data
from experiments import datasets

from .training_helpers import ROOT, run_train


def _predict(*args):
    return subprocess.run([sys.executable, "-m", "experiments.predict", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_idc_views_and_their_checks(idc_dir):
    val48 = datasets.open_dataset("idc", idc_dir, input_size=48)
    assert val48.input_size == 48 and val48.split("val")[0].shape == (768, 48, 48, 3)
    assert datasets.view_size("idc", 0, idc_dir) == 24  # the default view
    assert datasets.view_size("breastmnist") == 28
    from experiments.configs import get_config, override, validate

    for size, match in (("49", "input_size: 49 cannot be a centred view"),
                        ("2", "input_size: the models pool by 2 exactly"),
                        ("-1", "input_size: expected an int >= 0")):
        with pytest.raises(ValueError, match=match):
            validate(override(get_config(), ["dataset=idc", f"data_dir={idc_dir}",
                                              f"input_size={size}"]))


@pytest.mark.slow
def test_train_on_idc_then_predict_new_files(idc_dir, idc_raw_sample, tmp_path):
    # one epoch on 1% of the training split, stopped after its first step: scored end to
    # end, but not finished
    work = tmp_path / "run"
    sets = ["dataset=idc", "epochs=1", "train_fraction=0.01", "model=cnn", "progress=false"]
    smoke = run_train(work, idc_dir, sets + ["max_steps=1"])
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    results = json.loads((work / "results.json").read_text())
    assert results["input_size"] == 24 and results["steps"] == 1
    assert {"auc", "balanced_accuracy", "f1", "auc_per_group"} <= results["test"].keys()
    assert results["test"]["num_examples"] == 2177
    for figure in ("roc_test.png", "confusion_test.png", "learning_curves.png"):
        assert (work / figure).is_file()
    refused = _predict("--workdir", work, idc_raw_sample)
    assert refused.returncode == 2 and "has not finished training" in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr

    # the same command without the step limit finishes the run; then new files
    done = run_train(work, idc_dir, sets)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((work / "results.json").read_text())["finished"] is True
    odd = tmp_path / "odd"
    odd.mkdir()
    rgb = np.asarray(Image.open(next(idc_raw_sample.glob("9262/1/*.png"))))
    Image.fromarray(rgb[..., 0]).save(odd / "grey.png")  # one channel: refused
    Image.fromarray(rgb[:40, :40]).save(odd / "small.png")  # not 50x50: refused
    (odd / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = tmp_path / "preds.csv"
    got = _predict("--workdir", work, idc_raw_sample, odd, odd / "missing.png", "--out", out,
                   "--tta")
    assert got.returncode == 0, got.stderr
    skipped = {line.split(": ")[0].removeprefix("skipped "): line.split(": ", 1)[1]
               for line in got.stderr.splitlines() if line.startswith("skipped ")}
    assert len(skipped) == 3 + 4  # three edge patches of the sample, four bad files
    assert "has 1 channel (L); this run's model takes 3 (RGB)" in skipped[str(odd / "grey.png")]
    assert "is 40x40 (height x width); this run's images are 50x50" in \
        skipped[str(odd / "small.png")]
    assert "cannot be read" in skipped[str(odd / "missing.png")]
    assert "28 files predicted, 7 skipped" in got.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 28 and len(got.stdout.splitlines()) == 29  # a header and 28 rows
    for row in rows:
        p = np.array([float(row["p_non-IDC"]), float(row["p_IDC"])])
        assert abs(p.sum() - 1) < 1e-5
        assert row["predicted"] == ("IDC" if p[1] > p[0] else "non-IDC")
    # the same preprocessing as training: the published images' 24 px view, D4-averaged
    from dgcnn_jax import P4M
    from experiments import evaluate

    run = evaluate.load_run(work)
    with np.load(idc_dir / "idc50.npz") as archive:
        published = dict(zip(map(str, archive["train_files"]), archive["train_images"]))
    names = [row["file"].split(f"{idc_raw_sample}/")[1] for row in rows]
    view = data.center_view(np.stack([published[n] for n in names]), 24)
    want = np.mean([run.predict(np.ascontiguousarray(P4M.transform_image(view, g)))
                    for g in range(8)], axis=0)
    np.testing.assert_allclose([[float(r["p_non-IDC"]), float(r["p_IDC"])] for r in rows],
                               want, atol=1e-6)
    # evaluate --d4 --tta works on IDC, with the per-patient AUC (on validation: the
    # same code as the test split, a third of the images)
    result = evaluate.evaluate(work, "val", d4=True, tta=True)
    assert "auc_per_group" in result["metrics"] and len(result["d4"]["per_element"]) == 8
    assert result["metrics"]["auc"] == pytest.approx(
        json.loads((work / "results.json").read_text())["val"]["auc"], abs=1e-6)
    assert result["tta"]["num_examples"] == 768
