"""The sweep engine through ``experiments.compare``: runs, resume, tables, tuning, seeds
together, the full protocol's plan."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from experiments import evaluate, sweep, training
from experiments.configs import Config, get_config, override, validate


@pytest.mark.slow
def test_compare_sweep_smoke_and_resume(tmp_path, medmnist_dir, monkeypatch):
    from experiments import compare

    monkeypatch.chdir(tmp_path)  # a relative --workdir (orbax itself wants absolute paths)
    out = tmp_path / "sweep"
    # a 14 px view: the D4 scoring of the test split (8 copies, 6 runs) dominates this test
    argv = ["--workdir", "sweep", "--datasets", "breastmnist", "--models", "cnn",
            "p4m_dgcnn", "--ablations", "p4m_dgcnn_k1", "--seeds", "0", "1",
            "--set", "epochs=1", "--set", "steps_per_epoch=2", "--set", "input_size=14",
            "--set", "progress=false", "--set", "plots=false", "--set", "eval_batch_size=160",
            "--set", f"data_dir={medmnist_dir}"]
    rows = compare.main(argv)
    assert [(r["model"], r["seeds"]) for r in rows] == [
        ("cnn", 2), ("p4m_dgcnn", 2), ("p4m_dgcnn_k1", 2)]
    for name in ("results.json", "results.md", "auc_bars.png", "roc_breastmnist.png",
                 "attention.png", "attention.json", "equivariance.png", "equivariance.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "results.json").read_text())
    runs = {(r["model"], r["seed"]): r for r in summary["runs"]}
    for model in ("cnn", "p4m_dgcnn", "p4m_dgcnn_k1"):  # one by one on the CPU ("auto")
        results = json.loads((out / "breastmnist" / model / "seed1" / "results.json")
                             .read_text())
        assert results["seeds_trained_together"] == 1
    # the equivariant model scores the same on every D4 copy of the test split
    assert runs[("p4m_dgcnn", 0)]["d4_auc_max"] - runs[("p4m_dgcnn", 0)]["d4_auc_min"] < 1e-9
    # the ablation is the same net with one kernel bank: fewer parameters, own directory
    k1 = json.loads((out / "breastmnist" / "p4m_dgcnn_k1" / "seed0" / "config.json")
                    .read_text())
    assert (k1["model"], k1["num_kernels"]) == ("p4m_dgcnn", 1)
    by_name = {r["model"]: r for r in rows}
    assert by_name["p4m_dgcnn_k1"]["num_params"] < by_name["p4m_dgcnn"]["num_params"]
    assert by_name["p4m_dgcnn_k1"]["mflops"] < by_name["p4m_dgcnn"]["mflops"]
    table = (out / "results.md").read_text()
    assert "breastmnist: parameter-matched" in table and "breastmnist: ablations" in table
    assert "FLOP-matched" not in table  # no wide model ran
    equivariance = json.loads((out / "equivariance.json").read_text())
    assert len(equivariance["relative_error_per_layer"]) == 6
    assert equivariance["max_relative_error"] <= 1e-5
    attention = json.loads((out / "attention.json").read_text())
    # the default static stem has no attention: the 5 dynamic group layers, named
    assert [a["layer"] for a in attention["layers"]] == [f"convs/{i}" for i in range(1, 6)]
    for layer in attention["layers"]:
        assert sum(layer["mean"]) == pytest.approx(1.0, abs=1e-5)
    first = (out / "breastmnist" / "cnn" / "seed0" / "results.json").stat().st_mtime_ns
    recs = tmp_path / "records"
    compare.main([*argv, "--records", str(recs)])  # finished runs are not trained again
    assert (out / "breastmnist" / "cnn" / "seed0" / "results.json").stat().st_mtime_ns \
        == first
    # run records: written for the finished runs, enough without their work directories
    files = sorted(f.relative_to(recs).as_posix() for f in recs.rglob("*.json"))
    assert files == [f"breastmnist/{m}/seed{s}.json" for m in ("cnn", "p4m_dgcnn",
                                                                "p4m_dgcnn_k1") for s in (0, 1)]
    record = sweep.records.read(recs / files[0])
    probs, labels = sweep.records.probabilities(record)
    assert probs.shape == (156, 2) and labels.shape == (156,)
    assert np.allclose(probs, np.load(out / "breastmnist" / "cnn" / "seed0" / "test_probs.npy"),
                       atol=0.5 / sweep.records.PROBABILITY_SCALE)
    assert record["summary"]["test_auc"] == pytest.approx(runs[("cnn", 0)]["test_auc"], abs=1e-6)
    assert record["d4"]["d4"]["auc_min"] == pytest.approx(runs[("cnn", 0)]["d4_auc_min"])
    shutil.move(out, tmp_path / "moved")
    again = compare.main([*argv, "--records", str(recs)])  # trains nothing
    assert not (out / "breastmnist").exists() and not (out / "attention.png").exists()
    assert [(r["model"], r["seeds"], r["auc_mean"]) for r in again] == \
        [(r["model"], r["seeds"], pytest.approx(r["auc_mean"], abs=1e-6)) for r in rows]
    shutil.rmtree(out)
    shutil.move(tmp_path / "moved", out)
    # --no-train summarises the finished runs and trains nothing (seed 2 is missing)
    rows = compare.main([*argv, "--seeds", "0", "1", "2", "--no-train"])
    assert [(r["model"], r["seeds"]) for r in rows][0] == ("cnn", 2)
    assert not (out / "breastmnist" / "cnn" / "seed2").exists()
    # a run stopped between its test evaluation and its D4 scoring, its checkpoints not
    # kept (as packed by experiments/device_sweep.sh), is left out; with its D4 scores in
    seed2 = out / "breastmnist" / "cnn" / "seed2"
    shutil.copytree(out / "breastmnist" / "cnn" / "seed0", seed2)
    stored = json.loads((seed2 / "config.json").read_text())
    (seed2 / "config.json").write_text(json.dumps({**stored, "seed": 2}))  # as seed 2 had it
    shutil.rmtree(seed2 / "checkpoints")
    (seed2 / "checkpoints" / "best").mkdir(parents=True)  # empty: no checkpoint in it
    # what experiments/device_sweep.sh asks of a task line: every run trained and scored
    assert [str(r) for r in compare.run_dirs(argv)] == [
        f"sweep/breastmnist/{m}/seed{s}" for m in ("cnn", "p4m_dgcnn", "p4m_dgcnn_k1")
        for s in (0, 1)]
    assert all(compare.finished(r, scored=True) for r in compare.run_dirs(argv))
    (seed2 / "eval_test.json").unlink()
    assert not compare.finished(seed2) and not compare.finished(seed2, scored=True)
    # the cnn runs only (no p4m_dgcnn run, so no figures: quicker)
    cnn_only = ["--workdir", "sweep", "--datasets", "breastmnist", "--models", "cnn",
                "--seeds", "0", "1", "2", "--no-train", "--set", "epochs=1",
                "--set", "steps_per_epoch=2", "--set", "input_size=14",
                "--set", f"data_dir={medmnist_dir}"]
    rows = compare.main(cnn_only)
    assert [(r["model"], r["seeds"]) for r in rows] == [("cnn", 2)]
    shutil.copy(out / "breastmnist" / "cnn" / "seed0" / "eval_test.json", seed2)
    rows = compare.main(cnn_only)
    assert [(r["model"], r["seeds"]) for r in rows] == [("cnn", 3)]
    # a finished run trained with other settings is refused, not reported under these
    with pytest.raises(ValueError, match=r"seed0 was trained with another config \(epochs 1 -> 3"):
        compare.main([*cnn_only, "--set", "epochs=3"])
    with pytest.raises(ValueError, match="unknown model"):
        compare.main(["--workdir", str(tmp_path), "--models", "vgg"])
    with pytest.raises(ValueError, match="unknown model"):
        compare.main(["--workdir", str(tmp_path), "--models", "cnn", "--ablations", "k3"])


def test_compare_tables_group_the_families():
    import dataclasses

    from experiments import compare

    def row(model):
        return {"dataset": "breastmnist", "model": model}

    names = [t for t, _ in sweep.sections([row("cnn"), row("p4m_gcnn"),
                                             row("p4m_dgcnn_wide")])]
    assert names == ["breastmnist: parameter-matched", "breastmnist: FLOP-matched (dynamic "
                     "nets at the width of their static counterparts)"]
    tables = dict(sweep.sections([row("p4m_gcnn"), row("p4m_dgcnn_wide")]))
    flop = [r["model"] for r in tables[names[1]]]
    assert flop == ["p4m_gcnn", "p4m_dgcnn_wide"]  # the static reference sits beside it
    tables = dict(sweep.sections([row("p4m_gcnn"), row("cnn_augment"), row("cnn")]))
    assert [r["model"] for r in tables[names[0]]] == ["cnn", "cnn_augment", "p4m_gcnn"]
    assert sweep.entry("cnn_augment") == sweep.Entry("cnn", "parameter-matched",
                                                        {"augment": True})
    tables = sweep.sections([row("p4m_dgcnn"), row("p4m_dgcnn_k8"), row("densenet")])
    assert [t.split(": ")[1].split(" ")[0] for t, _ in tables] == [
        "parameter-matched", "ablations", "other"]
    tables = sweep.sections([row("cnn"), row("p4m_dgcnn"), row("p4m_dgcnn_orient")])
    assert [t.split(": ")[1].split(" ")[0] for t, _ in tables] == [
        "parameter-matched", "orientation-aware"]
    assert [r["model"] for r in tables[1][1]] == ["cnn", "p4m_dgcnn_orient"]
    assert sweep.entry("p4_gcnn_orient").overrides == {"readout": "orientation",
                                                          "learning_rate": 0.01}
    assert sweep.entry("cnn_lr1e-2").overrides == {"learning_rate": 0.01}
    plan = compare.plan_of(compare.parse_args(["--datasets", "pneumoniamnist",
                                               "--ablations"]))
    assert ("breastmnist", "p4m_dgcnn_orient") in plan  # every ablation, on its dataset
    assert ("pneumoniamnist", "p4m_dgcnn_orient") not in plan
    # the protocol (no --models) runs the ablations only when they are named
    plan = compare.plan_of(compare.parse_args(["--datasets", "pneumoniamnist"]))
    assert not any(name.endswith("_orient") for _, name in plan)
    # overrides are typed config fields, applied with dataclasses.replace
    fields = {f.name for f in dataclasses.fields(Config)}
    for name, run in sweep.RUNS.items():
        assert run.family in sweep.FAMILIES, name
        assert set(run.overrides) <= fields, name
    config = sweep.run_config(get_config(), "pneumoniamnist", "p4_gcnn_orient", 3)
    assert (config.model, config.readout, config.learning_rate, config.seed,
            config.dataset) == ("p4_gcnn", "orientation", 0.01, 3, "pneumoniamnist")
    with pytest.raises(ValueError, match="unknown model or sweep run 'vgg'"):
        sweep.entry("vgg")


@pytest.mark.slow
def test_pbc_end_to_end_train_compare_evaluate(tmp_path, pbc_dir, monkeypatch):
    """8 classes, RGB input: train, D4 robustness and TTA, compare tables and plots."""
    from experiments import compare

    monkeypatch.chdir(tmp_path)
    # a 14 px view: the D4 and TTA scoring of the 3,415 test images dominates this test
    sets = ["epochs=1", "steps_per_epoch=2", "progress=false", "input_size=14",
            f"data_dir={pbc_dir}"]
    work = tmp_path / "sweep" / "pbc" / "cnn" / "seed0"
    config = sweep.run_config(override(get_config(), sets), "pbc", "cnn", 0)
    results = training.train_and_evaluate(config, work)
    assert results["test"]["num_examples"] == 3415 and results["val"]["num_examples"] == 1707
    cm = np.asarray(results["test"]["confusion_matrix"])
    assert cm.shape == (8, 8) and cm.sum() == 3415
    assert np.bincount(np.load(work / "test_labels.npy"), minlength=8).tolist() == \
        cm.sum(axis=1).tolist()
    assert np.load(work / "test_probs.npy").shape == (3415, 8)
    for name in ("confusion_test.png", "roc_test.png", "learning_curves.png"):
        assert (work / name).is_file(), name
    out = evaluate.evaluate(work, "test", d4=True, tta=True)
    assert out["metrics"]["auc"] == pytest.approx(results["test"]["auc"], abs=1e-9)
    assert len(out["d4"]["per_element"]) == 8
    assert out["d4"]["per_element"][0] == out["metrics"]  # the identity copy
    for m in (out["metrics"], out["tta"], out["d4"]["per_element"][3]):
        assert set(m) >= {"accuracy", "balanced_accuracy", "auc", "nll", "confusion_matrix"}
        assert np.asarray(m["confusion_matrix"]).shape == (8, 8)
    # the sweep reuses the finished, scored run: tables and plots for 8 classes
    argv = ["--workdir", "sweep", "--datasets", "pbc", "--models", "cnn", "--seeds", "0",
            *[a for s in sets for a in ("--set", s)]]
    rows = compare.main(argv)
    assert [(r["dataset"], r["model"], r["seeds"]) for r in rows] == [("pbc", "cnn", 1)]
    for name in ("results.md", "auc_bars.png", "roc_pbc.png"):
        assert (tmp_path / "sweep" / name).is_file(), name
    table = (tmp_path / "sweep" / "results.md").read_text()
    assert "pbc: parameter-matched" in table and "test balanced accuracy" in table
    for key in ("auc", "accuracy", "balanced_accuracy", "nll"):
        assert rows[0][f"{key}_mean"] == pytest.approx(results["test"][key])
    # a 3-channel model: the lifting kernel reads 3 channels
    assert json.loads((work / "config.json").read_text())["dataset"] == "pbc"
    assert results["num_params"] == 100_488 + 2 * 9 * 47 + 6 * 48  # 1 -> 3 channels, 2 -> 8


@pytest.mark.slow
def test_compare_trains_the_seeds_of_a_run_together(tmp_path, medmnist_dir, monkeypatch):
    from experiments import compare

    monkeypatch.chdir(tmp_path)
    argv = ["--workdir", "sweep", "--datasets", "breastmnist", "--models", "cnn", "--seeds",
            "0", "1", "--seeds-together", "yes", "--set", "epochs=1", "--set", "steps_per_epoch=2",
            "--set", f"data_dir={medmnist_dir}"]
    rows = compare.main(argv)
    assert [(r["model"], r["seeds"]) for r in rows] == [("cnn", 2)]
    run = tmp_path / "sweep" / "breastmnist" / "cnn"
    for seed in (0, 1):
        results = json.loads((run / f"seed{seed}" / "results.json").read_text())
        assert results["seeds_trained_together"] == 2 and results["seed"] == seed
    first = (run / "seed0" / "results.json").stat().st_mtime_ns
    compare.main(argv)  # finished seeds are not trained again
    assert (run / "seed0" / "results.json").stat().st_mtime_ns == first
    with pytest.raises(ValueError, match="seeds: the sweep takes its seeds from --seeds"):
        compare.main(argv + ["--set", "seeds=0,1"])


def test_compare_without_options_is_the_full_protocol():
    from experiments import compare

    args = compare.parse_args([])
    assert args.datasets == ["pbc", "breastmnist", "pneumoniamnist"]
    assert args.models == list(sweep.PROTOCOL_RUNS) and args.results_dir == "results/accelerator"
    assert args.tune == ("learning_rate", ["0.001", "0.003", "0.01"])
    assert compare.seeds_of(args, "breastmnist") == list(range(10))
    assert compare.seeds_of(args, "pbc") == list(range(5))
    assert len(compare.plan_of(args)) == 3 * len(sweep.PROTOCOL_RUNS)  # no ablations
    for name in sweep.PROTOCOL_RUNS:  # every run of the protocol is a valid config
        validate(sweep.run_config(get_config(), "pbc", name, 0))
    narrowed = compare.parse_args(["--models", "cnn", "--seeds", "3"])
    assert narrowed.tune is None and narrowed.results_dir is None
    assert compare.seeds_of(narrowed, "breastmnist") == [3]
    with pytest.raises(SystemExit):
        compare.parse_args(["--tune", "no_such_field=1,2"])


@pytest.mark.slow
def test_compare_tunes_on_validation_then_trains_the_seeds(tmp_path, medmnist_dir,
                                                            monkeypatch):
    from experiments import compare

    monkeypatch.chdir(tmp_path)
    argv = ["--workdir", "sweep", "--datasets", "breastmnist", "--models", "cnn",
            "--seeds", "0", "--tune", "learning_rate=0.001,0.01", "--tune-seeds", "7",
            "--set", "epochs=1", "--set", "steps_per_epoch=3", "--set", "progress=false",
            "--set", "plots=false", "--set", "eval_batch_size=160",
            "--set", f"data_dir={medmnist_dir}", "--results-dir", "res"]
    compare.main(argv)
    aucs = {}
    for value in ("0.001", "0.01"):
        work = tmp_path / "sweep" / "tune" / "breastmnist" / "cnn" / \
            f"learning_rate={value}" / "seed7"
        results = json.loads((work / "results.json").read_text())
        assert results["test"] is None  # validation only
        assert json.loads((work / "config.json").read_text())["learning_rate"] == float(value)
        aucs[value] = results["val"]["auc"]
    chosen = max(aucs, key=aucs.get)
    tuned = json.loads((tmp_path / "sweep" / "breastmnist" / "cnn" / "tuned.json").read_text())
    assert tuned["chosen"] == chosen and tuned["val_auc_mean"] == aucs
    final = tmp_path / "sweep" / "breastmnist" / "cnn" / "seed0"
    assert json.loads((final / "config.json").read_text())["learning_rate"] == float(chosen)
    doc = json.loads((tmp_path / "res" / "breastmnist.json").read_text())
    assert doc["models"]["cnn"]["tuned"]["chosen"] == chosen
    assert doc["protocol"]["tune"] == {"field": "learning_rate", "values": ["0.001", "0.01"],
                                       "seeds": [7]}
    # resumable: nothing is trained again, the same file comes out
    before = (tmp_path / "res" / "breastmnist.json").read_text()
    compare.main([*argv, "--no-train"])
    after = json.loads((tmp_path / "res" / "breastmnist.json").read_text())
    assert after["models"] == json.loads(before)["models"]


def test_a_pool_hands_each_run_on_as_it_finishes(tmp_path, monkeypatch):
    """``--workers`` > 1: each run is a process; a run that exits 0 and is finished goes
    to ``done`` at once (the sweep records it there), a failed one does not."""
    import os

    from experiments.sweep import execute
    from .training_helpers import finished_run

    jobs = [(task, task.config(get_config()), task.workdir(tmp_path))
            for task in (sweep.Task("idc", "cnn", s) for s in (0, 1, 2))]
    by_path = {str(work.path): (task, config) for task, config, work in jobs}
    commands, envs = [], []

    class FakeProcess:  # a training process that finishes at once; seed 1 fails
        def __init__(self, cmd, stdout, stderr, env):
            commands.append(cmd)
            envs.append(env)
            task, config = by_path[cmd[cmd.index("--workdir") + 1]]
            self.returncode = 1 if task.seed == 1 else 0
            if self.returncode == 0:
                finished_run(jobs[task.seed][2].path, "cnn", task.seed, 1.0, config)

        def poll(self):
            return self.returncode

    monkeypatch.setattr(execute.subprocess, "Popen", FakeProcess)
    done = []
    codes = execute.train_pool(jobs, 2, done=lambda task, config, work: done.append(task.seed))
    assert codes == {"idc cnn seed 0": 0, "idc cnn seed 1": 1, "idc cnn seed 2": 0}
    assert sorted(done) == [0, 2]
    assert all("experiments.train" in cmd for cmd in commands)
    assert all("glibc.malloc.hugetlb" in env["GLIBC_TUNABLES"] for env in envs)
    if len(os.sched_getaffinity(0)) >= 2:  # one core per process
        assert sorted(cmd[2] for cmd in commands[:2]) == [str(c) for c in
                                                          sorted(os.sched_getaffinity(0))[:2]]


def test_training_processes_ask_for_huge_pages():
    from experiments.sweep import execute

    env = execute.child_env({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": execute.HUGEPAGE_TUNABLE}
    other = execute.child_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert other["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{execute.HUGEPAGE_TUNABLE}"
    own = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert execute.child_env(own) == own  # the user's setting stands
