"""Statistics over seeds and images, results files and their tables, curve documents."""

import json
import pathlib

import numpy as np
import pytest


def test_curve_statistics():
    from experiments import stats

    got = stats.mean_interval([0.9, 0.92, 0.94])
    assert got["mean"] == pytest.approx(0.92) and got["std"] == pytest.approx(0.02)
    half = 4.302652729911275 * 0.02 / np.sqrt(3)  # t(0.975, df=2)
    assert (got["low"], got["high"]) == pytest.approx((0.92 - half, 0.92 + half))
    t = stats.paired_t([0.9, 0.8, 0.85], [0.88, 0.79, 0.80])
    assert t["mean_difference"] == pytest.approx(0.026666666, rel=1e-6)
    assert 0 < t["p"] < 1
    # a model right on every image the other gets wrong, and more: tiny p
    rng = np.random.default_rng(0)
    b = (rng.random((3, 400)) < 0.7).astype(float)
    a = np.maximum(b, (rng.random((3, 400)) < 0.5))
    boot = stats.paired_bootstrap(a, b, resamples=2000)
    assert boot["difference"] == pytest.approx((a - b).mean())
    assert boot["low"] > 0 and boot["p"] == pytest.approx(1 / 2000)
    # the same predictions: no difference, p = 1
    same = stats.paired_bootstrap(b, b, resamples=500)
    assert same["difference"] == 0 and same["p"] == 1.0
    # swapping the models mirrors the interval
    back = stats.paired_bootstrap(b, a, resamples=2000)
    assert back["difference"] == pytest.approx(-boot["difference"])
    with pytest.raises(ValueError, match="correct_a, correct_b: expected equal shapes"):
        stats.paired_bootstrap(a, b[:2])


def test_holm_adjustment_of_a_family_of_p_values():
    from experiments import stats

    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04); input order kept
    assert stats.holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert stats.holm([0.5, None, 0.2]) == pytest.approx([0.5, None, 0.4])  # m = 2
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([0.02]) == [0.02] and stats.holm([]) == []
    with pytest.raises(ValueError, match=r"pvalues: expected values in \[0, 1\] or None"):
        stats.holm([0.1, 1.5])


def _fake_runs(tmp_path, accuracy, seeds=(0, 1, 2), fraction=1.0):
    """Run summaries as experiments.sweep.summary returns them, with test predictions on disk:
    ``accuracy[model]`` right answers out of 200 images, per seed."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 200)
    runs = []
    for model, per_seed in accuracy.items():
        for seed, right in zip(seeds, per_seed):
            work = tmp_path / model / f"seed{seed}"
            work.mkdir(parents=True)
            pred = np.where(np.arange(200) < right, labels, (labels + 1) % 4)
            np.save(work / "test_probs.npy", np.eye(4)[pred])
            np.save(work / "test_labels.npy", labels)
            runs.append({"dataset": "pbc", "model": model, "seed": seed, "workdir": str(work),
                         "train_fraction": fraction, "num_train": 100, "val_auc": 0.9,
                         "best_epoch": 3, "test_accuracy": right / 200,
                         "test_balanced_accuracy": right / 200, "test_auc": 0.5 + right / 400,
                         "test_nll": 1 - right / 200, "num_params": 1000,
                         "forward_flops": 2e6, "train_seconds": 10.0 + seed,
                         "backend": "cpu"})
    return runs


def test_results_files_and_their_tables(tmp_path):
    from experiments import report, stats

    runs = _fake_runs(tmp_path, {"p4m_gcnn": [150, 160, 170], "p4m_dgcnn_wide": [180, 181, 190],
                                 "cnn": [140, 150, 150]})
    paths = report.write_results(runs, tmp_path / "results", {"seeds": [0, 1, 2]},
                                 order=["cnn", "p4m_gcnn", "p4m_dgcnn_wide"])
    assert [p.name for p in paths] == ["pbc.json"]
    doc = json.loads(paths[0].read_text())
    assert list(doc["models"]) == ["cnn", "p4m_gcnn", "p4m_dgcnn_wide"]
    m = doc["models"]["p4m_gcnn"]
    assert [s["accuracy"] for s in m["per_seed"]] == [0.75, 0.8, 0.85]
    assert m["accuracy"]["mean"] == pytest.approx(0.8) and m["accuracy"]["std"] == \
        pytest.approx(0.05)
    assert m["num_params"] == 1000 and m["train_seconds_mean"] == pytest.approx(11.0)
    assert doc["machine"]["backend"] == "cpu"
    pairs = {(t["a"], t["b"]): t for t in doc["tests"]}
    assert set(pairs) == {("p4m_dgcnn_wide", "p4m_gcnn"), ("p4m_gcnn", "cnn"),
                          ("p4m_dgcnn_wide", "cnn")}
    t = pairs["p4m_dgcnn_wide", "p4m_gcnn"]
    assert t["accuracy_difference"] == pytest.approx((30 + 21 + 20) / 3 / 200)
    from scipy import stats as st
    assert t["t_test_p"] == pytest.approx(st.ttest_rel([0.9, 0.905, 0.95],
                                                       [0.75, 0.8, 0.85]).pvalue)
    # images the better model gets right and the other not, on every seed: tiny p
    assert t["bootstrap"]["difference"] == pytest.approx(t["accuracy_difference"])
    assert t["bootstrap"]["low"] > 0 and t["bootstrap"]["p"] < 1e-3
    text = report.main([str(paths[0]), "--out", str(tmp_path / "tables.md")])
    assert "| `p4m_gcnn` | 3 | 0.8000 +- 0.0500" in text
    assert "`p4m_dgcnn_wide` vs `p4m_gcnn` | 3 | +0.1183" in text
    # under the paired table: every row's t-test p-values, Holm-adjusted over the 3 rows
    holm_line = text.splitlines()[-1]
    assert holm_line.startswith("Paired t-test p (accuracy / AUC), Holm-adjusted over the 3 "
                                "comparisons of this table: ")
    tests = doc["tests"]
    acc = stats.holm([x["t_test_p"] for x in tests])
    auc = stats.holm([x["auc_t_test_p"] for x in tests])
    for x, qa, qu in zip(tests, acc, auc):
        assert (f"`{x['a']}` vs `{x['b']}` {report.p_text(x['t_test_p'])} / "
                f"{report.p_text(x['auc_t_test_p'])} -> {report.p_text(qa)} / "
                f"{report.p_text(qu)}") in holm_line
    smallest = min(x["t_test_p"] for x in tests)
    assert min(acc) == pytest.approx(3 * smallest)  # the smallest p times the family size
    # a pair with one seed has no t-test: it is not counted in the family
    one_seed = {**tests[0], "t_test_p": None, "auc_t_test_p": None}
    line = report._holm_lines([one_seed, *tests[1:]])[1]
    assert "over the comparisons of this table with a t-test (2 / 2): " in line
    assert f"{report.p_text(tests[1]['t_test_p'])} / " in line and "n/a / n/a -> n/a / n/a" in line
    assert report._holm_lines([one_seed, tests[1]]) == []
    assert (tmp_path / "tables.md").read_text() == text


def test_curve_documents_from_runs(tmp_path):
    from experiments import curves

    runs = (_fake_runs(tmp_path / "a", {"cnn": [100, 120], "p4m_gcnn": [130, 150]},
                       seeds=(0, 1), fraction=0.05)
            + _fake_runs(tmp_path / "b", {"cnn": [180, 182], "p4m_gcnn": [181, 185]},
                         seeds=(0, 1), fraction=1.0))
    doc = curves.document(runs, {"steps": 10})
    rows = {(r["train_fraction"], r["model"]): r for r in doc["summary"]}
    assert rows[0.05, "p4m_gcnn"]["error"]["values"] == pytest.approx([0.35, 0.25])
    assert [(t["train_fraction"], t["a"], t["b"]) for t in doc["tests"]] == [
        (0.05, "p4m_gcnn", "cnn"), (1.0, "p4m_gcnn", "cnn")]
    assert doc["tests"][0]["accuracy_difference"] == pytest.approx(0.15)
    curves.plot(doc, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert "| 0.05 | 100 | `p4m_gcnn` | 2 | 0.7000 +- 0.0707" in curves.markdown(doc)


def test_epoch_times_document_from_finished_runs(tmp_path):
    from experiments import epoch_times

    results = {"model": "cnn", "dataset": "idc", "input_size": 24, "epochs_run": 2,
               "steps": 446, "num_params": 101334, "train_seconds": 60.0,
               "train_images_per_second": 238.0, "eval_images_per_second": 600.0,
               "pipeline": "device", "finished": True}
    for name, finished in (("done", True), ("stopped", False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"batch_size": 32}))
        (tmp_path / name / "results.json").write_text(json.dumps(
            {**results, "finished": finished}))
    doc = epoch_times.collect([str(tmp_path / "done")], "pinned")
    assert doc["runs"][0]["epoch_seconds"] == 30.0 and doc["how"] == "pinned"
    table = epoch_times.markdown(doc)
    assert "| `cnn` | 24 px | 101,334 | 30 | 223 | 238 | 600 |" in table
    assert table.endswith(", pinned.")
    with pytest.raises(ValueError, match="stopped is not a finished training run"):
        epoch_times.collect([str(tmp_path / "stopped")])
    # a run with the test split unread (score_test=false) has no inference time
    (tmp_path / "untested").mkdir()
    (tmp_path / "untested" / "config.json").write_text(json.dumps({"batch_size": 32}))
    (tmp_path / "untested" / "results.json").write_text(json.dumps(
        {k: v for k, v in results.items() if not k.endswith("images_per_second")}))
    doc = epoch_times.collect([str(tmp_path / "untested")])
    assert "| `cnn` | 24 px | 101,334 | 30 | 223 | 238 | - |" in epoch_times.markdown(doc)
    (tmp_path / "untested" / "results.json").write_text(json.dumps(  # 2 seeds together
        {**{k: v for k, v in results.items() if not k.endswith("images_per_second")},
         "seeds_trained_together": 2}))
    doc = epoch_times.collect([str(tmp_path / "untested")])
    assert doc["runs"][0]["train_images_per_second"] == pytest.approx(476.0, rel=1e-3)


def test_pilot_document_reads_validation_curves_only(tmp_path):
    from experiments import pilot

    history = [{"epoch": e, "step": 10 * e, "val_auc": auc, "val_accuracy": 0.8,
                "val_nll": 0.4} for e, auc in enumerate([0.80, 0.906, 0.897, 0.91], 1)]
    history.append({"epoch": 5, "step": 43, "val_auc": 0.5, "val_accuracy": 0.5,
                    "val_nll": 0.9, "partial": True})  # a stopped epoch is left out
    for name, score_test in (("pilot", False), ("tested", True)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(
            {"model": "p4m_gcnn", "dataset": "idc", "seed": 0, "epochs": 20,
             "score_test": score_test}))
        (tmp_path / name / "metrics.jsonl").write_text(
            "".join(json.dumps(h) + "\n" for h in history))
    doc = pilot.collect([str(tmp_path / "pilot")])
    run = doc["runs"][0]
    assert run["epochs_done"] == 4 and run["steps_per_epoch"] == 10
    assert run["val_auc"] == [0.80, 0.906, 0.897, 0.91]
    assert pilot.flat_from(run["val_auc"]) == 2  # 0.906 is within 0.005 of the best
    assert pilot.flat_from([0.8, 0.9, 0.91]) == 3 and pilot.flat_from([]) is None
    table = pilot.markdown(doc)  # epochs 1, 2 and 4 shown
    assert "| `p4m_gcnn` seed 0 | 4 of 20 | 0.8000 | 0.9060 | 0.9100 | 0.9100 (4) | 2 |" \
        in table
    with pytest.raises(ValueError, match="tested reads the test split"):
        pilot.collect([str(tmp_path / "tested")])
    # a protocol's run record (it read its test split) adds its validation curve, named so
    committed = pathlib.Path(__file__).parents[1] / "results" / "runs" / "pbc" / "p4m_gcnn"
    record = tmp_path / "records" / "pbc" / "p4m_gcnn" / "seed1.json"
    record.parent.mkdir(parents=True)
    record.write_text((committed / "seed1.json").read_text())
    doc = pilot.collect([str(tmp_path / "pilot")], records=[str(record)])
    assert [r.get("record", False) for r in doc["runs"]] == [False, True]
    history = json.loads(record.read_text())["history"]
    assert doc["runs"][1]["val_accuracy"] == [h["val_accuracy"] for h in history]
    assert "| `p4m_gcnn` seed 1 (record) | 15 of 15 |" in pilot.markdown(doc)
    with pytest.raises(ValueError, match="not a run record"):
        pilot.collect([], records=[str(tmp_path / "pilot" / "config.json")])
    only = pilot.main(["--records", str(record), "--out",
                       str(tmp_path / "records.json")])  # records alone are a document
    assert [r["record"] for r in only["runs"]] == [True]
    with pytest.raises(SystemExit):
        pilot.main(["--out", str(tmp_path / "nothing.json")])
    # a run of a sweep (<name>/seed<N>) is named by its run, not by its model
    (tmp_path / "odgcnn_assign").mkdir()
    (tmp_path / "pilot").rename(tmp_path / "odgcnn_assign" / "seed0")
    doc = pilot.collect([str(tmp_path / "odgcnn_assign" / "seed0")])
    assert doc["runs"][0]["run"] == "odgcnn_assign"
    assert "| `odgcnn_assign` seed 0 | 4 of 20 |" in pilot.markdown(doc)
    two = {**doc, "runs": [*doc["runs"], {**doc["runs"][0], "seed": 1}]}
    pilot.plot(two, tmp_path / "curves.png")  # several seeds of a run: a panel per run
    assert (tmp_path / "curves.png").stat().st_size > 0
    # where the AUC saturates (PBC): the table and "flat from" of another score
    doc = pilot.collect([str(tmp_path / "odgcnn_assign" / "seed0")], "val_nll")
    assert doc["metric"] == "val_nll"
    doc["runs"][0]["val_nll"] = [0.5, 0.3, 0.298, 0.31]
    table = pilot.markdown(doc)
    assert table.startswith("validation NLL per epoch")
    assert "| 0.5000 | 0.3000 | 0.3100 | 0.2980 (3) | 2 |" in table  # lower is better
    assert pilot.flat_from([0.5, 0.3, 0.298], lower_is_better=True) == 2
    with pytest.raises(ValueError, match="metric: expected one of"):
        pilot.collect([str(tmp_path / "odgcnn_assign" / "seed0")], "test_auc")


def test_p_values_keep_two_significant_digits():
    from experiments.report import p_text

    assert [p_text(p) for p in (0.3, 0.1, 0.025, 0.39, 1.0, 2e-4, 1e-4, None)] == [
        "0.30", "0.10", "0.025", "0.39", "1.0", "0.00020", "<= 1e-4", "n/a"]


def test_selection_blocks_say_which_runs_are_missing():
    from experiments import report

    doc = json.loads((pathlib.Path(__file__).parents[1] / "results"
                      / "idc_selection.json").read_text())
    headline, table = (report._blocks()[kind] for kind in ("selection-headline", "selection"))
    assert "Interim" not in headline({**doc, "missing": []})
    assert headline({**doc, "missing": ["idc/x/seed0"]}).endswith(
        "(Interim: 1 run not finished.)")
    assert headline({**doc, "missing": ["a", "b"]}).endswith("(Interim: 2 runs not finished.)")
    assert table({**doc, "missing": ["a", "b"]}).endswith("\n\nNot finished: a, b.")
