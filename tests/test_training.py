"""The training command and loop: smoke run on real data, exact resume after kills, data
parallel, non-finite losses, the work directory's guards, bad configs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import configs, evaluate, train, training
from experiments.configs import get_config, override, validate
from tests.training_helpers import (
    FAST,
    ROOT,
    assert_close,
    comparable,
    run_train,
    stop_and_resume,
)


def test_bad_config_fails_before_training(tmp_path):
    base = get_config()
    for sets, match in ((["model=resnet"], "model: unknown model 'resnet'"),
                        (["dataset=mnist"], "unknown dataset 'mnist'"),
                        (["dataset=idc", "input_size=3"], "input_size: the models pool by 2"),
                        (["attention_targets=banks,pixels"], "attention_targets: expected"),
                        (["bank_mix=l2"], "bank_mix: expected one of softmax, signed"),
                        (["bank_start=orthogonal"], "bank_start: expected one of random"),
                        (["model=p4m_gcnn", "bank_mix=signed"], "p4m_gcnn has no dynamic"),
                        (["dataset=idc", "input_size=49"], "input_size: 49 cannot be"),
                        (["learning_rate=-0.1"], "learning_rate: expected a finite value > 0"),
                        (["learning_rate=inf"], "learning_rate: expected a finite value > 0"),
                        (["weight_decay=nan"], "weight_decay: expected a finite value >= 0"),
                        (["warmup_epochs=inf"], "warmup_epochs: expected a finite value"),
                        (["grad_clip_norm=nan"], "grad_clip_norm: expected a finite value"),
                        (["tau_initial=nan"], "tau_initial: the temperature must be a finite"),
                        (["dropout=nan"], "dropout: expected a rate"),
                        (["batch_size=0"], "batch_size: expected a positive int"),
                        (["optimizer=rmsprop"], "optimizer"),
                        (["dropout=1.5"], "dropout"),
                        (["model=p4m_gcnn", "num_kernels=2"], "p4m_gcnn has no dynamic"),
                        (["num_kernels=-1"], "num_kernels: expected an int >= 1"),
                        (["attention=spatial"], "attention: expected 'invariant'"),
                        (["readout=max"], "readout: expected one of invariant, orientation"),
                        (["train_fraction=0"], "train_fraction: expected a fraction in"),
                        (["train_fraction=1.5"], "train_fraction: expected a fraction in"),
                        (["train_fraction=nan"], "train_fraction: expected a fraction in"),
                        (["data_seed=-1"], "data_seed: expected an int >= 0"),
                        (["model=p4m_densenet", "readout=orientation"],
                         "readout: only the 28 px models"),
                        (["pipeline=gpu"], "pipeline: expected one of auto, device, host"),
                        (["dataset=pcam", "model=p4m_densenet", "pipeline=device"],
                         "pipeline: pcam is read from disk"),
                        (["pipeline=device", "checkpoint_every_steps=5"],
                         "pipeline: the device pipeline saves at epoch boundaries"),
                        (["seeds=0,x"], "seeds: expected distinct ints >= 0"),
                        (["seeds=1,1"], "seeds: expected distinct ints >= 0"),
                        (["seeds=-1"], "seeds: expected distinct ints >= 0"),
                        (["seeds=0,1", "pipeline=host"], "seeds: several seeds train together")):
        with pytest.raises(ValueError, match=match):
            validate(override(base, sets))
    with pytest.raises(ValueError, match="unknown config field"):
        override(base, ["epoch=3"])
    with pytest.raises(ValueError, match="expected key=value"):
        override(base, ["epochs"])
    out = run_train(tmp_path / "bad", tmp_path, ["model=resnet"])
    assert out.returncode == 2 and "model: unknown model" in out.stderr
    assert not (tmp_path / "bad").exists()  # nothing was started


def test_default_work_directory_names_model_dataset_and_seed():
    config = override(get_config(), ["model=cnn", "dataset=pbc", "seed=3"])
    assert train.default_workdir(config) == "runs/cnn-pbc-seed3"
    assert train.default_workdir(get_config()) == "runs/p4m_dgcnn-breastmnist-seed0"


def test_batch_not_divisible_by_devices(tmp_path):
    code = ("from experiments.configs import get_config, override, validate\n"
            "validate(override(get_config(), ['batch_size=33']))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu",
                              "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert out.returncode != 0
    assert "batch_size: 33 is not divisible by the number of devices (2)" in out.stderr


def test_smoke_default_config_on_real_data(tmp_path, medmnist_dir):
    config = override(get_config(), ["max_steps=3", "progress=false",
                                     f"data_dir={medmnist_dir}"])  # the 30-epoch schedule
    assert config.model == "p4m_dgcnn" and config.dataset == "breastmnist"
    results = training.train_and_evaluate(config, tmp_path)
    for name in ("config.json", "metrics.jsonl", "results.json", "learning_curves.png",
                 "roc_test.png"):
        assert (tmp_path / name).is_file(), name
    assert results["steps"] == 3 and results["test"]["num_examples"] == 156
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    # the test split is scored with the temperature the best epoch was validated with
    assert results["best_tau"] == pytest.approx(history[results["best_epoch"] - 1]["tau"])
    assert results["best_tau"] > 25.0  # 3 steps into the 30 -> 1 annealing over 3 epochs
    # per-epoch diagnostics of each dynamic layer (the static stem has none) and their figure
    layers = history[0]["dynamic_layers"]
    assert [d["layer"] for d in layers] == [f"convs/{i}" for i in range(1, 6)]
    for d in layers:
        assert 0 <= d["attention_entropy"] <= np.log(4) + 1e-6
        assert d["attention_spread"] >= 0 and 0 < d["bank_common_share"] <= 1
    assert (tmp_path / "dynamic_diagnostics.png").is_file()
    assert 0.0 <= results["test"]["auc"] <= 1.0
    assert results["num_params"] > 50_000
    assert json.loads((tmp_path / "results.json").read_text())["test"] == results["test"]
    assert (tmp_path / "checkpoints" / "latest").is_dir()
    assert (tmp_path / "checkpoints" / "best").is_dir()


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, medmnist_dir):
    sets = FAST + ["checkpoint_every_steps=5"]
    full = run_train(tmp_path / "full", medmnist_dir, sets)
    assert full.returncode == 0, full.stdout + full.stderr
    expected = json.loads((tmp_path / "full" / "results.json").read_text())

    work = tmp_path / "killed"
    proc = run_train(work, medmnist_dir, sets, wait=False)
    latest = work / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a mid-epoch checkpoint (step 10) exists
        steps = [int(p.name) for p in latest.glob("[0-9]*") if p.name.isdigit()]
        if steps and max(steps) >= 10:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "results.json").exists(), "the run finished before it was killed"
    resumed = run_train(work, medmnist_dir, sets)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from step" in resumed.stdout
    got = json.loads((work / "results.json").read_text())
    assert_close(comparable(got), comparable(expected), tol=1e-6)
    hist_a = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").open()]
    hist_b = [json.loads(line) for line in (work / "metrics.jsonl").open()]
    assert_close(hist_b, hist_a, tol=1e-6)
    # max_steps stops the host pipeline mid-epoch at an exact position (issue: nothing
    # silently wrong): resumed without it, the run ends as the uninterrupted one
    stop_and_resume(tmp_path / "stopped", medmnist_dir, sets, 3, tmp_path / "full")


@pytest.mark.slow
def test_two_host_devices_match_one(tmp_path, medmnist_dir):
    # Sharded reductions round differently; over many Adam steps the runs drift apart
    # chaotically (measured at FAST's 16 px view, train loss / val NLL: identical / 2e-9
    # after 3 steps, 4e-6 / 8e-5 after 8, 5e-4 / 1e-2 after 17), so the curves are
    # compared over the first 8 steps. (FAST anneals the temperature over
    # the first epoch; with tau at 1 after two steps, as the default 10% of a 1-epoch run
    # gives, the drift after 8 steps was 3.3e-5.)
    curves = {}
    for devices in (1, 2):
        out = run_train(tmp_path / f"d{devices}", medmnist_dir,
                   FAST + ["epochs=1", "max_steps=8", "train_fraction=1", "batch_size=32",
                           f"num_devices={devices}"],
                   env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
        assert out.returncode == 0, out.stdout + out.stderr
        results = json.loads((tmp_path / f"d{devices}" / "results.json").read_text())
        assert results["devices"] == devices
        curves[devices] = [json.loads(line) for line in
                           (tmp_path / f"d{devices}" / "metrics.jsonl").open()]
    assert len(curves[1]) == len(curves[2]) == 1
    for a, b in zip(curves[1], curves[2]):
        np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=2e-5)
        np.testing.assert_allclose(b["val_nll"], a["val_nll"], rtol=5e-4)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, medmnist_dir):
    # an absurd learning rate: the first step (warm-up rate 0) is good and saved, the
    # second blows the parameters up; the run stops and keeps the good checkpoint
    work = tmp_path / "run"
    sets = FAST + ["learning_rate=1e30", "checkpoint_every_steps=1"]
    for _ in range(2):  # and resuming the same run stops the same way
        out = run_train(work, medmnist_dir, sets)
        assert out.returncode == 1
        assert "non-finite training loss" in out.stderr and "last good checkpoint" in out.stderr
        assert "(step 1)" in out.stderr and "at epoch 1, step 2" in out.stderr
        assert "Traceback" not in out.stderr
        kept = sorted(p.name for p in (work / "checkpoints" / "latest").iterdir())
        assert kept == ["1"]


def test_auto_pipeline_is_the_device_one_where_the_split_fits():
    assert configs.pipeline(get_config()) == "device"
    assert configs.pipeline(override(get_config(), ["dataset=pbc"])) == "device"
    assert configs.pipeline(get_config("pcam")) == "host"
    assert configs.pipeline(override(get_config(), ["checkpoint_every_steps=5"])) == "host"
    assert configs.pipeline(override(get_config(), ["pipeline=host"])) == "host"


@pytest.mark.slow
def test_device_pipeline_stops_on_nan_and_refuses_another_pipeline_on_resume(
        tmp_path, medmnist_dir):
    work = tmp_path / "nan"
    out = run_train(work, medmnist_dir, FAST + ["learning_rate=1e30"])
    assert out.returncode == 1 and "Traceback" not in out.stderr
    # step 1 (warm-up rate 0) is good, step 2 blows up; the epoch is one program, so
    # nothing was saved yet
    assert "non-finite training loss" in out.stderr and "at epoch 1, step 2" in out.stderr
    assert "no checkpoint had been saved yet" in out.stderr
    # "auto" resolves to the host pipeline with mid-epoch checkpoints (a change that may
    # resume): a run trained on the device pipeline is not continued on the host one
    work = tmp_path / "run"
    first = run_train(work, medmnist_dir, FAST + ["max_steps=2"])  # a device-pipeline checkpoint
    assert first.returncode == 0, first.stdout + first.stderr
    out = run_train(work, medmnist_dir, FAST + ["checkpoint_every_steps=5"])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "trained with the device pipeline, this one would use the host pipeline" \
        in out.stderr
    out = run_train(work, medmnist_dir, FAST + ["pipeline=host"])
    assert out.returncode == 2 and "pipeline 'auto' -> 'host'" in out.stderr


@pytest.mark.slow
def test_work_directory_guards(tmp_path, medmnist_dir):
    """A changed config, a second process, a missing latest and a damaged checkpoint."""
    work = tmp_path / "run"
    sets = FAST + ["epochs=1", "max_steps=3"]
    first = run_train(work, medmnist_dir, sets)
    assert first.returncode == 0, first.stdout + first.stderr
    expected = json.loads((work / "results.json").read_text())
    stored = (work / "config.json").read_text()
    # resuming with settings that change the run stops with one line and changes nothing
    out = run_train(work, medmnist_dir, FAST + ["epochs=3", "max_steps=3", "seed=1"])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "holds a run with another config (epochs 1 -> 3; seed 0 -> 1)" in out.stderr
    assert (work / "config.json").read_text() == stored
    # a harmless change (progress bar, evaluation batch) resumes the finished run
    out = run_train(work, medmnist_dir, sets + ["eval_batch_size=64"])
    assert out.returncode == 0, out.stderr
    # a second process on the same folder is refused while the first holds it
    with training.Workdir(work).locked():  # a second process
        out = run_train(work, medmnist_dir, sets, process=True)
        assert out.returncode == 2 and "is in use by process" in out.stderr
        assert "Traceback" not in out.stderr
    # best/N saved but latest gone (as after a kill between the two saves): the rerun
    # saves best/N again and ends with the same results
    shutil.rmtree(work / "checkpoints" / "latest")
    out = run_train(work, medmnist_dir, sets)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_close(comparable(json.loads((work / "results.json").read_text())),
                  comparable(expected))
    # a damaged latest checkpoint: one line naming the folder, no traceback
    step = next(p for p in (work / "checkpoints" / "latest").iterdir() if p.name.isdigit())
    for f in (step / "model").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"")
    out = run_train(work, medmnist_dir, sets)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"{step}: the checkpoint cannot be restored" in out.stderr


@pytest.mark.slow
def test_resume_after_kills_aimed_at_each_save_phase(tmp_path, medmnist_dir):
    """The folders a kill leaves in each phase of an epoch's two saves (best, then
    latest), made exactly: a half-written best; a finished best without its latest and a
    half-written latest. Each resume ends with the uninterrupted run's results."""
    full = run_train(tmp_path / "full", medmnist_dir, FAST)
    assert full.returncode == 0, full.stdout + full.stderr
    expected = json.loads((tmp_path / "full" / "results.json").read_text())
    work = tmp_path / "run"
    ckpt = work / "checkpoints"
    first = run_train(work, medmnist_dir, FAST + ["max_steps=8"])  # epoch 1 of 2 (8 steps)
    assert first.returncode == 0, first.stdout + first.stderr
    assert sorted(p.name for p in (ckpt / "latest").iterdir()) == ["8"]
    assert sorted(p.name for p in (ckpt / "best").iterdir()) == ["1"]
    saved = tmp_path / "epoch1"
    shutil.copytree(ckpt, saved)
    # 1. killed while best/2 was being written: its temporary folder is left
    shutil.copytree(ckpt / "best" / "1", ckpt / "best" / "2.orbax-checkpoint-tmp")
    out = run_train(work, medmnist_dir, FAST)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming from step 8" in out.stdout
    assert_close(comparable(json.loads((work / "results.json").read_text())),
                  comparable(expected))
    assert not any("tmp" in p.name for p in (ckpt / "best").iterdir())
    # 2. killed after best/1 was saved, while latest/8 was being written: best/1 is
    # complete, latest holds only a temporary folder; the rerun starts over and saves
    # best/1 again (this used to stop with StepAlreadyExistsError)
    fresh = tmp_path / "fresh"
    shutil.copytree(saved / "best", fresh / "checkpoints" / "best")
    shutil.copytree(saved / "latest" / "8",
                    fresh / "checkpoints" / "latest" / "8.orbax-checkpoint-tmp")
    shutil.copy(work / "config.json", fresh / "config.json")
    out = run_train(fresh, medmnist_dir, FAST)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming" not in out.stdout
    assert_close(comparable(json.loads((fresh / "results.json").read_text())),
                  comparable(expected))
    assert sorted(p.name for p in (fresh / "checkpoints" / "latest").iterdir()) == ["16"]
    # max_steps in the middle of the second epoch (the device pipeline): resumed without
    # it, the run continues that epoch and ends as the uninterrupted one
    stop_and_resume(tmp_path / "stopped", medmnist_dir, FAST, 11, tmp_path / "full")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["p4m_densenet", "p4m_ddensenet"])
def test_pcam_config_smoke_on_prepared_mock_data(tmp_path, model):
    from dgcnn_jax.data import tfds_sources
    from experiments.configs import get_config as named_config
    from tests.test_tfds_sources import _write_pcam_manual_dir

    _write_pcam_manual_dir(tmp_path / "manual", sizes=(12, 6, 6))
    tfds_sources.prepare_pcam(tmp_path / "tfds", tmp_path / "manual")
    base = named_config("pcam")
    assert (base.dataset, base.model, base.batch_size, base.epochs) == (
        "pcam", "p4m_densenet", 64, 100)
    config = override(base, [f"model={model}", "epochs=1", "max_steps=2", "batch_size=4",
                             "eval_batch_size=4", "progress=false",
                             f"data_dir={tmp_path / 'tfds'}"])
    results = training.train_and_evaluate(config, tmp_path / "run")
    assert results["steps"] == 2 and results["test"]["num_examples"] == 6
    assert results["val"]["num_examples"] == 6
    # what a prediction on new files reads: PCam's own 96 px RGB view
    assert results["input_size"] == 96 and len(results["normalization"]["mean"]) == 3
    # the trained dynamic/static P4M net is invariant on the PCam test patches
    out = evaluate.evaluate(tmp_path / "run", "test", d4=True)
    assert out["d4"]["max_prob_difference"] < 1e-5
    with pytest.raises(ValueError, match="config: unknown config 'imagenet'"):
        named_config("imagenet")
