"""Several seeds trained together, and epochs of a set number of steps."""

import json

import numpy as np
import pytest

from experiments import evaluate, training
from experiments.configs import get_config, override
from tests.training_helpers import FAST, assert_close, comparable, run_train


@pytest.mark.slow
def test_several_seeds_together_equal_the_seeds_one_by_one(tmp_path, medmnist_dir):
    # batch 32 as the tolerances below were measured; the figures of each seed too
    sets = FAST + ["epochs=1", "max_steps=8", "train_fraction=1", "batch_size=32",
                   "plots=true"]
    out = run_train(tmp_path / "together", medmnist_dir, sets + ["seeds=0,1"])
    assert out.returncode == 0, out.stdout + out.stderr
    for seed in (0, 1):
        alone = run_train(tmp_path / f"alone{seed}", medmnist_dir, sets + [f"seed={seed}"])
        assert alone.returncode == 0, alone.stdout + alone.stderr
        work = tmp_path / "together" / f"seed{seed}"
        # each seed's folder is what a run of that seed alone writes
        stored = json.loads((work / "config.json").read_text())
        assert stored["seed"] == seed and stored["seeds"] == ""
        assert training.config_differences(
            stored, override(get_config(), sets + [f"seed={seed}"])) == []
        for name in ("metrics.jsonl", "results.json", "learning_curves.png", "roc_test.png",
                     "test_probs.npy"):
            assert (work / name).is_file(), name
        got = json.loads((work / "results.json").read_text())
        want = json.loads((tmp_path / f"alone{seed}" / "results.json").read_text())
        assert got["seeds_trained_together"] == 2 and want["seeds_trained_together"] == 1
        assert got["best_epoch"] == want["best_epoch"] and got["steps"] == want["steps"] == 8
        # The same computation but for rounding: the stacked (vmapped) convolutions sum in
        # another order, as the data-parallel runs do (measured over these 8 steps: train
        # loss 2e-8, val NLL 6e-8 relative at FAST's 16 px view; 5e-5 and 8e-5 at 28 px).
        a = json.loads((work / "metrics.jsonl").read_text())
        b = json.loads((tmp_path / f"alone{seed}" / "metrics.jsonl").read_text())
        assert a["train_accuracy"] == b["train_accuracy"]
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=2e-4)
        np.testing.assert_allclose(a["val_nll"], b["val_nll"], rtol=5e-4)
        np.testing.assert_allclose(got["test"]["nll"], want["test"]["nll"], rtol=5e-4)
        # and it is evaluated like one
        scored = evaluate.evaluate(work, "test")
        assert scored["metrics"]["auc"] == pytest.approx(got["test"]["auc"], abs=1e-9)


@pytest.mark.slow
def test_several_seeds_resume_at_an_epoch_boundary(tmp_path, medmnist_dir):
    # the CNN on a quarter of the split (137 images): 2 steps of 64 an epoch
    sets = FAST + ["seeds=0,1", "model=cnn", "batch_size=64", "train_fraction=0.25"]
    full = run_train(tmp_path / "full", medmnist_dir, sets)
    assert full.returncode == 0, full.stdout + full.stderr
    work = tmp_path / "run"
    first = run_train(work, medmnist_dir, sets + ["max_steps=2"])  # epoch 1 of 2
    assert first.returncode == 0, first.stdout + first.stderr
    # another seed list is refused while this one is unfinished
    other = run_train(work, medmnist_dir, [*sets[:-4], "seeds=0,2", *sets[-3:]])
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "holds an unfinished run of seeds 0,1: resume it with --set seeds=0,1" \
        in other.stderr
    resumed = run_train(work, medmnist_dir, sets)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming 2 seeds from epoch 1" in resumed.stdout
    for seed in (0, 1):
        got = json.loads((work / f"seed{seed}" / "results.json").read_text())
        want = json.loads((tmp_path / "full" / f"seed{seed}" / "results.json").read_text())
        assert_close(comparable(got), comparable(want), tol=1e-6)
    # once both have results, another seed list may use the folder
    more = run_train(work, medmnist_dir, [*sets[:-4], "seeds=2", *sets[-3:], "max_steps=2"])
    assert more.returncode == 0, more.stdout + more.stderr
    assert (work / "seed2" / "results.json").is_file()


@pytest.mark.slow
def test_epochs_of_a_set_number_of_steps(tmp_path, medmnist_dir):
    # a stratified quarter of BreastMNIST's training split (137 images): 8 batches of 16 a pass
    sets = FAST + ["model=cnn", "train_fraction=0.25", "data_seed=3"]
    out = run_train(tmp_path / "passes", medmnist_dir, sets)
    assert out.returncode == 0, out.stdout + out.stderr
    same = run_train(tmp_path / "eight", medmnist_dir, sets + ["steps_per_epoch=8"])
    assert same.returncode == 0, same.stdout + same.stderr
    # epochs of one pass's steps are the default epochs, to the bit
    for name in ("metrics.jsonl", "results.json"):
        a = (tmp_path / "passes" / name).read_text()
        b = (tmp_path / "eight" / name).read_text()
        if name == "results.json":
            a, b = comparable(json.loads(a)), comparable(json.loads(b))
        assert a == b, name
    longer = run_train(tmp_path / "ten", medmnist_dir, sets + ["steps_per_epoch=10"])
    assert longer.returncode == 0, longer.stdout + longer.stderr
    results = json.loads((tmp_path / "ten" / "results.json").read_text())
    history = [json.loads(line) for line in (tmp_path / "ten" / "metrics.jsonl").open()]
    assert results["steps"] == 20 and [h["step"] for h in history] == [10, 20]
    assert results["num_train"] // 16 == 8
    assert json.loads((tmp_path / "ten" / "config.json").read_text())["steps_per_epoch"] == 10
    assert history[0]["train_loss"] != json.loads(
        (tmp_path / "passes" / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
