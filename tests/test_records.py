"""Run records (experiments.sweep.records) and the results built from them alone
(experiments.results), on small records made from synthetic finished runs: no training."""

import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest

from dgcnn_jax import metrics
from experiments import report, results, stats
from experiments.configs import get_config
from experiments.sweep import records, summary

from .training_helpers import N, finished_run


@pytest.fixture
def recorded(tmp_path):
    """Records of p4m_gcnn (better) and p4m_dgcnn_wide, seeds 0-2, and cnn seed 0."""
    root = tmp_path / "runs"
    for name, skill in (("p4m_gcnn", 2.0), ("p4m_dgcnn_wide", 1.0), ("cnn", 1.0)):
        for seed in ((0, 1, 2) if name != "cnn" else (0,)):
            task, config, work = finished_run(tmp_path / "work" / name / f"seed{seed}",
                                               name, seed, skill)
            records.write(records.make(task, work, summary(task, config, work),
                                       report.machine()), root)
    shutil.rmtree(tmp_path / "work")  # results come from the records alone
    return root


def test_a_record_keeps_what_the_results_need(recorded):
    file = records.path(recorded, "idc", "p4m_gcnn", 1)
    record = records.read(file)
    assert set(record) >= {"config", "history", "summary", "test", "test_labels",
                           "test_probs", "machine", "sha256"}
    probs, labels = records.probabilities(record)
    assert probs.shape == (N, 2) and labels.shape == (N,)
    assert metrics.roc_auc(probs, labels) == pytest.approx(record["test"]["auc"], abs=1e-3)
    assert file.stat().st_size < 8_000  # small enough to commit
    runs = records.collect(recorded)
    assert [(r["model"], r["seed"]) for r in runs] == [
        ("cnn", 0), ("p4m_dgcnn_wide", 0), ("p4m_dgcnn_wide", 1), ("p4m_dgcnn_wide", 2),
        ("p4m_gcnn", 0), ("p4m_gcnn", 1), ("p4m_gcnn", 2)]
    assert runs[0]["record"].endswith("idc/cnn/seed0.json") and "workdir" not in runs[0]


def test_damaged_edited_or_misplaced_records_are_refused_with_their_path(recorded):
    file = records.path(recorded, "idc", "cnn", 0)
    text = file.read_text()
    record = json.loads(text)
    edited = {**record, "test": {**record["test"], "auc": 0.99}}  # a better number typed in
    file.write_text(json.dumps(edited))
    with pytest.raises(records.RecordError, match=f"{file}: contents do not match"):
        records.read(file)
    with pytest.raises(records.RecordError, match=f"{file}: contents do not match"):
        records.collect(recorded)
    file.write_text(text[: len(text) // 2])  # cut short
    with pytest.raises(records.RecordError, match=f"{file}: not a readable run record"):
        records.read(file)
    file.write_text(json.dumps({k: v for k, v in record.items() if k != "history"}))
    with pytest.raises(records.RecordError, match="field 'history' missing"):
        records.read(file)
    moved = records.path(recorded, "idc", "cnn", 5)
    moved.write_text(text)
    with pytest.raises(records.RecordError, match="holds idc/cnn/seed0, expected at"):
        records.read(moved)
    # probabilities that do not give the recorded accuracy (a consistent digest: a bug,
    # not an edit)
    flipped = {**record, "test_probs": [row[::-1] for row in record["test_probs"]]}
    flipped["sha256"] = records._digest(flipped)
    file.write_text(json.dumps(flipped))
    with pytest.raises(records.RecordError, match="test_probs give accuracy"):
        records.read(file)
    # a record is done only for the config it was trained with
    file.write_text(text)
    other = dataclasses.replace(get_config(), dataset="idc", model="cnn", epochs=7)
    with pytest.raises(records.RecordError, match="recorded with another config"):
        records.check_config(records.read(file), other, file)


def test_a_sweep_records_each_run_as_soon_as_it_finishes(tmp_path, monkeypatch):
    """A sweep stopped in its second run has already recorded the first one: its record
    does not wait for the sweep's end, so moving to another machine loses nothing."""
    from experiments.sweep import Sweep, engine, execute

    trained = []

    def fake_training(config, path):
        if trained:  # the second run: the sweep is stopped in it
            raise KeyboardInterrupt
        trained.append(config.seed)
        finished_run(pathlib.Path(path), config.model, config.seed, 1.0, config)

    monkeypatch.setattr(execute, "train_and_evaluate", fake_training)
    recs = tmp_path / "records"
    sweep = Sweep(root=tmp_path / "work", seeds={"idc": [0, 1]}, d4=False, records=recs)
    with pytest.raises(KeyboardInterrupt):
        engine.run(sweep, get_config(), [("idc", "p4m_gcnn")])
    assert trained == [0]
    record = records.read(records.path(recs, "idc", "p4m_gcnn", 0))
    assert record["summary"]["test_auc"] > 0.5
    assert not records.path(recs, "idc", "p4m_gcnn", 1).exists()


def test_a_selection_takes_validation_scores_from_the_protocols_records(recorded, tmp_path,
                                                                         capsys):
    """``select --records``: a seed the protocol trained with the same config comes from
    its record (validation only: no test or D4 scores), nothing is trained or recorded,
    and a record of other settings is refused with its path."""
    from experiments import select

    before = sorted(recorded.rglob("*.json"))
    work = tmp_path / "select"
    rows = select.main(["--workdir", str(work), "--dataset", "idc", "--variants", "p4m_gcnn",
                        "p4m_dgcnn_wide", "--seeds", "0", "1", "2", "3", "--records",
                        str(recorded), "--no-train"])
    assert "not finished" in capsys.readouterr().out  # seed 3 has no record
    gcnn = next(r for r in rows if r["variant"] == "p4m_gcnn")
    assert [run["seed"] for run in gcnn["runs"]] == [0, 1, 2]
    for run in gcnn["runs"]:
        record = records.read(records.path(recorded, "idc", "p4m_gcnn", run["seed"]))
        assert run["val_auc"] == record["summary"]["val_auc"]
        assert run["record"].endswith(f"idc/p4m_gcnn/seed{run['seed']}.json")
        assert not any(k.startswith(("test_", "d4_")) for k in run)
    assert sorted(recorded.rglob("*.json")) == before  # a selection writes no record
    assert not (work / "idc").exists()  # and trains nothing it has a record for
    # --metric: what the table and headline compare, kept in --results for the report
    out = tmp_path / "selection.json"
    select.main(["--workdir", str(work), "--dataset", "idc", "--variants", "p4m_gcnn",
                 "p4m_dgcnn_wide", "--seeds", "0", "1", "2", "--records", str(recorded),
                 "--no-train", "--metric", "val_accuracy_max", "--results", str(out)])
    doc = json.loads(out.read_text())
    assert doc["metric"] == "val_accuracy_max"
    block = report.render_block(out.name, "selection", out.parent)
    assert "| val best accuracy per seed |" in block
    headline = report.render_block(out.name, "selection-headline", out.parent)
    assert "by mean best validation accuracy" in headline
    file = records.path(recorded, "idc", "p4m_gcnn", 0)
    with pytest.raises(records.RecordError, match=f"{file}.*epochs"):
        select.main(["--workdir", str(work), "--dataset", "idc", "--variants", "p4m_gcnn",
                     "--seeds", "0", "--records", str(recorded), "--no-train",
                     "--set", "epochs=7"])


def test_results_are_rebuilt_from_records_alone(recorded, tmp_path):
    out, figures = tmp_path / "results", tmp_path / "docs"
    written = results.main(["--records", str(recorded), "--out", str(out), "--figures",
                            str(figures), "--update"])
    assert written == [out / "idc.json"]
    assert (figures / "results_idc.png").is_file()
    doc = json.loads((out / "idc.json").read_text())
    assert list(doc["models"]) == ["cnn", "p4m_gcnn", "p4m_dgcnn_wide"]  # the plan's order
    gcnn = doc["models"]["p4m_gcnn"]
    per_seed = [records.read(records.path(recorded, "idc", "p4m_gcnn", s))["test"]["auc"]
                for s in (0, 1, 2)]
    assert [s["auc"] for s in gcnn["per_seed"]] == pytest.approx(per_seed, abs=1e-6)
    assert gcnn["auc"]["mean"] == pytest.approx(np.mean(per_seed))
    assert "f1" in gcnn and "f1" in gcnn["per_seed"][0]
    assert "cnn_augment/seed0" in doc["protocol"]["missing"]
    test = next(t for t in doc["tests"] if (t["a"], t["b"]) == ("p4m_dgcnn_wide", "p4m_gcnn"))
    assert test["seeds"] == [0, 1, 2] and test["auc_difference"] < 0
    assert test["auc_bootstrap"]["high"] < 0  # the weaker model, on every resample's mean
    text = results.headline(doc)
    assert "**Does the dynamic layer help on idc?**" in text
    assert "the dynamic layer is worse" in text
    assert "Not yet recorded (18 runs of the plan): `cnn_augment` seeds 0, 1, 2, 3, 4;" in text
    assert "`p4m_dgcnn_wide_k1` seeds 0, 1, 2, 3, 4;" in text  # the selected form's control
    doc["protocol"]["missing"] = ["cnn/seed4", "p4m_gcnn/seed2", "p4m_gcnn/seed3"]
    assert ("Not yet recorded (3 runs of the plan): `cnn` seed 4; `p4m_gcnn` seeds 2, 3."
            in results.headline(doc))
    assert "| test F1 |" in report.markdown(doc) and "AUC bootstrap p" in report.markdown(doc)
    # nothing to build from: one line naming the folder
    with pytest.raises(ValueError, match="no run records"):
        results.build(tmp_path / "none", out, None)


def test_the_cpu_plan_runs_the_dynamic_form_the_committed_selection_chose():
    from experiments import sweep

    root = pathlib.Path(__file__).resolve().parents[1]
    doc = json.loads((root / "results" / "idc_selection.json").read_text())
    assert not doc["missing"] and {r["seeds"] for r in doc["rows"]} == {3}
    assert sweep.chosen_dynamic(doc["rows"])["variant"] == results.SELECTED_DYNAMIC
    control = sweep.ONE_BANK_CONTROLS[results.SELECTED_DYNAMIC]
    for names, _ in results.CPU_PLAN.values():
        assert {"p4m_gcnn", "p4m_dgcnn_wide", results.SELECTED_DYNAMIC, control} <= set(names)


def test_the_verdict_needs_both_tests():
    doc = {"dataset": "x", "protocol": {}, "models": {}, "tests": [
        {"a": "p4m_dgcnn_wide", "b": "p4m_gcnn", "seeds": [0, 1, 2, 3, 4],
         "auc_difference": 0.01, "auc_t_test_p": 0.01,
         "auc_bootstrap": {"images": 100, "low": -0.001, "high": 0.02, "p": 0.08}}]}
    assert ("higher across seeds (t-test), but within the spread over test images "
            "(bootstrap): not a difference this protocol can call at 5 seeds"
            in results.headline(doc))
    doc["tests"][0].update(auc_difference=-0.01, auc_t_test_p=0.3)
    doc["tests"][0]["auc_bootstrap"]["p"] = 0.01
    assert ("lower on the test images of these 5 seeds (bootstrap), but the spread between "
            "seeds leaves it open (t-test)" in results.headline(doc))
    doc["tests"][0]["auc_bootstrap"]["p"] = 0.2
    assert "no difference this protocol can detect at 5 seeds" in results.headline(doc)
    doc["tests"][0].update(auc_difference=0.01, auc_t_test_p=0.01)
    doc["tests"][0]["auc_bootstrap"]["p"] = 0.01
    assert "the dynamic layer is better" in results.headline(doc)
    sentence = results.verdict(doc)  # the README's block kind "verdict": the sentence alone
    assert sentence.startswith("**Does the dynamic layer help on x?**")
    assert results.headline(doc).endswith("\n\n" + sentence) and "|" not in sentence
    doc["tests"][0].update(seeds=[0], auc_t_test_p=None)  # one seed: no t-test yet
    assert "not decided yet (1 seed: the paired t-test needs" in results.headline(doc)
    doc["tests"] = []  # one of the two not recorded: the question stays, unanswered
    assert results.verdict(doc) == ("**Does the dynamic layer help on x?** `p4m_dgcnn_wide` "
                                    "minus `p4m_gcnn`: not answered yet, as they are not both "
                                    "recorded.")


def test_weighted_auc_is_the_auc_of_the_resampled_images():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) * 0.5 + 0.3 * labels, 2)  # ties
    probs = np.stack([1 - scores, scores], axis=1)
    counts = rng.multinomial(300, np.full(300, 1 / 300), size=3).astype(float)
    got = stats.weighted_auc(scores, labels == 1, counts)
    for row, value in zip(counts, got):
        idx = np.repeat(np.arange(300), row.astype(int))
        assert value == pytest.approx(metrics.roc_auc(probs[idx], labels[idx]), abs=1e-12)
    same = stats.paired_bootstrap_auc(probs[None], probs[None], labels, resamples=200)
    assert (same["difference"], same["low"], same["high"], same["p"]) == (0, 0, 0, 1)
    # multi-class: macro one-vs-rest
    labels8 = rng.integers(0, 4, 300)
    probs8 = rng.dirichlet(np.ones(4), 300) + np.eye(4)[labels8] * 0.3
    probs8 /= probs8.sum(1, keepdims=True)
    worse = rng.dirichlet(np.ones(4), 300)
    boot = stats.paired_bootstrap_auc(probs8[None], worse[None], labels8, resamples=200)
    assert boot["difference"] == pytest.approx(metrics.roc_auc(probs8, labels8)
                                               - metrics.roc_auc(worse, labels8), abs=1e-12)
    assert boot["low"] > 0 and boot["p"] == pytest.approx(1 / 200)
    with pytest.raises(ValueError, match=r"expected equal shapes \[seeds, images, classes\]"):
        stats.paired_bootstrap_auc(probs[None], probs, labels)
