"""The evaluate command (D4 robustness, TTA) and the main-job benchmark rows."""

import json

import pytest

from experiments import evaluate, training
from experiments.configs import get_config, override


@pytest.mark.slow
def test_evaluate_command_d4_robustness_and_tta(tmp_path, medmnist_dir):

    for model, invariant in (("p4m_dgcnn", True), ("cnn", False)):
        work = tmp_path / model
        # a 14 px view: the D4 and TTA scoring (8 copies of the test split) dominates
        config = override(get_config(), [f"model={model}", "epochs=1", "max_steps=3",
                                         "input_size=14", "progress=false",
                                         f"data_dir={medmnist_dir}"])
        results = training.train_and_evaluate(config, work)
        out = evaluate.evaluate(work, "test", d4=True, tta=True)
        # the evaluate command reproduces the training run's test metrics
        assert out["metrics"]["auc"] == pytest.approx(results["test"]["auc"], abs=1e-9)
        assert len(out["d4"]["per_element"]) == 8
        assert (work / "eval_test.json").is_file()
        if invariant:
            assert out["d4"]["max_prob_difference"] < 1e-5
            assert out["d4"]["auc_max"] - out["d4"]["auc_min"] < 1e-9
            assert out["tta"]["auc"] == pytest.approx(out["metrics"]["auc"], abs=1e-6)
        else:
            assert out["d4"]["max_prob_difference"] > 1e-4
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        evaluate.evaluate(tmp_path / "nothing")
    # a place that cannot be written is reported before anything is computed; --out
    # writes elsewhere (for a read-only work directory)
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    with pytest.raises(ValueError, match=r"out: cannot write .*a_file/e.json \(its folder is "
                                         r"missing or read-only\)"):
        evaluate.evaluate(work, "val", out=blocked / "e.json")
    out = evaluate.evaluate(work, "val", out=tmp_path / "cnn_val.json")
    assert json.loads((tmp_path / "cnn_val.json").read_text())["metrics"] == out["metrics"]


@pytest.mark.slow
def test_benchmark_times_the_main_job_per_pipeline(medmnist_dir):
    from experiments import benchmark

    # a small job: the CNN on a quarter of the training split, 2 steps of 64 images an
    # epoch (the default: p4m_dgcnn on all of it)
    rows = benchmark.job_rows(1, 1e10, medmnist_dir, seeds=2,
                              sets=["model=cnn", "batch_size=64", "train_fraction=0.25"])
    assert [r["name"] for r in rows] == ["cnn breastmnist epoch (host)",
                                         "cnn breastmnist epoch (device)",
                                         "cnn breastmnist epoch (2 seeds together)"]
    for r, seeds in zip(rows, (1, 1, 2)):  # timed after a first (compiling) epoch
        assert r["median_s"] > 0 and r["compile_s"] > 0
        assert r["images_per_s"] == pytest.approx(seeds * 2 * 64 / r["median_s"])
    assert rows[1]["ratio_to_host"] == pytest.approx(rows[1]["median_s"] / rows[0]["median_s"])
    assert rows[2]["ratio_to_host"] == pytest.approx(rows[2]["median_s"] / 2
                                                     / rows[0]["median_s"])
    assert "of host" in benchmark.markdown({"matmul_flops_per_s": 1e10, "device": "cpu",
                                            "rows": rows})


def test_dynamic_benchmark_times_every_form_against_the_static_layer(tmp_path):
    from experiments import benchmark_dynamic, report

    out = tmp_path / "bench.json"
    results = benchmark_dynamic.main(["--batch", "2", "--size", "8", "--fields", "2",
                                      "--repeats", "2", "--groups", "p4m", "--impls", "fast",
                                      "--output", str(out)])
    rows = results["rows"]
    assert [(r["layer"], r["impl"]) for r in rows] == [
        ("GroupConv", "-"), ("DynamicGroupConv", "fast"),
        *[("DynamicGroupConv", form) for form in benchmark_dynamic.FORMS]]
    for row in rows:  # every ratio against the static layer timed in the same process
        assert row["ratio"] == pytest.approx(row["median_s"] / rows[0]["median_s"])
        assert len(row["times_s"]) == 2 and row["median_s"] > 0
    assert json.loads(out.read_text())["rows"] == rows
    table = report.render_block(out.name, "benchmark-dynamic", tmp_path)
    assert table.count("\n| p4m |") == len(rows) and "Measured on " in table
    short = report.render_block(out.name, "benchmark-dynamic-headline", tmp_path)
    assert short.count("\n|") == 1 + len(rows) and "third form (`p4m_odgcnn`)" in short


def test_hugepages_pairs_alternate_settings_and_render(monkeypatch):
    from experiments import hugepages, report

    own = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=2"}
    env = hugepages.setting_env("glibc.malloc.hugetlb=0", own)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0"
    assert hugepages.setting_env("glibc.malloc.hugetlb=1", {})["GLIBC_TUNABLES"] == \
        "glibc.malloc.hugetlb=1"
    calls = []

    def runner(model, setting, repeats, cpu):
        calls.append((model, setting))
        fast = setting.endswith("=1")
        return {"median_s": (0.8 if fast else 1.0) * (2 if model == "b" else 1),
                "minor_faults": 1_000 if fast else 50_000, "batch": 32}

    doc = hugepages.measure(["a", "b"], 2, 3, how="test", runner=runner)
    off, on = hugepages.SETTINGS
    assert calls == [("a", off), ("a", on), ("a", on), ("a", off),
                     ("b", off), ("b", on), ("b", on), ("b", off)]
    assert [round(r["ratio"], 6) for r in doc["rows"]] == [0.8, 0.8]
    table = hugepages.markdown(doc)
    assert "| `b` | 2000.0 | 1600.0 | 0.80 | 2000, 2000 / 1600, 1600 | 50,000, 50,000 / " \
           "1,000, 1,000 |" in table
    assert "batch 32, median of 3" in table and "2 pairs of processes per model" in table
    assert table.endswith("test.")
    assert "hugepages" in report.BLOCKS
    with pytest.raises(ValueError, match="pairs and repeats"):
        hugepages.measure(["a"], 0, 3, runner=runner)


def test_hugepages_runner_reports_a_failed_benchmark():
    from experiments import hugepages

    with pytest.raises(RuntimeError, match="benchmark of no_such_model"):
        hugepages.run_benchmark("no_such_model", hugepages.SETTINGS[1], 1)
