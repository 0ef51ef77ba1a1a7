"""The sweep engine through ``experiments.select`` (validation only) and the learning
curves (``experiments.compare --fractions``)."""

import dataclasses
import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import sweep
from experiments.configs import get_config, validate


def test_select_paired_tests_pair_runs_by_seed():
    def runs(model, values, seeds=(0, 1, 2)):
        return [{"model": model, "seed": s, "val_auc": v, "val_accuracy": v,
                 "val_accuracy_max": v, "best_epoch": 1} for s, v in zip(seeds, values)]

    rows = sweep.selection_rows(
        runs("p4m_gcnn", [0.80, 0.85, 0.90]) + runs("cnn", [0.92, 0.81, 0.82], seeds=(2, 0, 1))
        + runs("p4m_dgcnn_wide", [0.9], seeds=(7,)), ["p4m_gcnn", "cnn", "p4m_dgcnn_wide"],
        ["p4m_gcnn", "cnn"])
    ref, better, alone = rows
    d = np.array([0.81 - 0.80, 0.82 - 0.85, 0.92 - 0.90])  # paired by seed, not by position
    t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    from scipy import stats
    paired = better["paired"]["p4m_gcnn"]
    assert paired["seeds"] == 3
    assert paired["val_auc_p"] == pytest.approx(2 * stats.t.sf(abs(t), df=2))
    assert paired["val_auc_diff_mean"] == pytest.approx(d.mean())
    # the second reference: the same test the other way round
    assert ref["paired"]["cnn"]["val_auc_diff_mean"] == pytest.approx(-d.mean())
    assert ref["paired"]["cnn"]["val_auc_p"] == pytest.approx(paired["val_auc_p"])
    assert alone["paired"] == {} and list(ref["paired"]) == ["cnn"]
    assert list(better["paired"]) == ["p4m_gcnn"]  # not against itself
    table = sweep.selection_markdown(rows, "t", ["p4m_gcnn", "cnn"]).splitlines()
    assert table[2].endswith("| vs `p4m_gcnn`: AUC difference (p) / accuracy p | vs `cnn`: "
                             "AUC difference (p) / accuracy p |")
    assert table[5].startswith("| `cnn` | 3 | 0.8100 / 0.8200 / 0.9200 | 0.850 +- 0.061 |")
    assert table[5].endswith(f"| {paired['val_auc_diff_mean']:+.4f} ({paired['val_auc_p']:.3f}) / "
                             f"{paired['val_accuracy_p']:.3f} (3 seeds) | - |")
    # no spread in the differences: no p-value (one paired t-test for every command)
    same = sweep.selection_rows(runs("p4m_gcnn", [0.8, 0.85, 0.9])
                                + runs("cnn", [0.81, 0.86, 0.91]), ["p4m_gcnn", "cnn"],
                                "p4m_gcnn")[1]
    assert same["paired"]["p4m_gcnn"]["val_auc_p"] is None
    assert "(n/a) / n/a (3 seeds)" in sweep.selection_markdown([same], "t", "p4m_gcnn")


def test_selection_headline_names_the_best_dynamic_form_and_says_whether_it_beats():
    def runs(model, values, share=None):
        extra = {} if share is None else {"bank_common_share": share}
        return [{"model": model, "seed": s, "val_auc": v, "val_accuracy": v,
                 "val_accuracy_max": v, "best_epoch": 1, **extra} for s, v in enumerate(values)]

    static = runs("p4m_gcnn", [0.90, 0.92, 0.94])
    wide = runs("p4m_dgcnn_wide", [0.91, 0.94, 0.95], share=0.7)  # higher, banks alike
    assign = runs("p4m_odgcnn_assign", [0.89, 0.93, 0.92], share=0.2)
    names = ["p4m_gcnn", "p4m_dgcnn_wide", "p4m_odgcnn_assign"]
    rows = sweep.selection_rows(static + wide + assign, names, "p4m_gcnn")
    assert sweep.chosen_dynamic(rows)["variant"] == "p4m_dgcnn_wide"
    line = sweep.selection_headline(rows, "t", "p4m_gcnn")
    assert line.startswith("t: the best dynamic form by mean validation AUC, `p4m_dgcnn_wide`, "
                           "0.9333 +- 0.0208 (3 seeds), against 0.9200 +- 0.0200 for "
                           "`p4m_gcnn` (paired difference +0.0133, p ")
    assert line.endswith("bank common share 0.70): no dynamic form beats `p4m_gcnn` in mean "
                         "validation AUC with its banks apart (bank common share < 0.5).")
    rows = sweep.selection_rows(static + runs("p4m_odgcnn_assign", [0.93, 0.93, 0.95], 0.2),
                                ["p4m_gcnn", "p4m_odgcnn_assign"], "p4m_gcnn")
    assert sweep.selection_headline(rows, "t", "p4m_gcnn").endswith(
        "`p4m_odgcnn_assign` beats `p4m_gcnn` in mean with its banks apart.")
    assert "no dynamic run" in sweep.selection_headline(rows[:1], "t", "p4m_gcnn")


def test_selection_on_best_validation_accuracy_where_the_auc_is_saturated():
    def runs(model, auc, acc, share=None):
        extra = {} if share is None else {"bank_common_share": share}
        return [{"model": model, "seed": s, "val_auc": a, "val_accuracy": c - 0.01,
                 "val_accuracy_max": c, "best_epoch": 1, **extra}
                for s, (a, c) in enumerate(zip(auc, acc))]

    # AUC ranks the dynamic form first, best accuracy ranks it below the static net
    static = runs("p4m_gcnn", [0.9990, 0.9991, 0.9992], [0.985, 0.988, 0.986])
    wide = runs("p4m_dgcnn_wide", [0.9995, 0.9996, 0.9994], [0.980, 0.984, 0.983], 0.3)
    rows = sweep.selection_rows(static + wide, ["p4m_gcnn", "p4m_dgcnn_wide"], "p4m_gcnn")
    assert "`p4m_dgcnn_wide` beats" in sweep.selection_headline(rows, "t", "p4m_gcnn")
    line = sweep.selection_headline(rows, "t", "p4m_gcnn", "val_accuracy_max")
    d = np.array([0.980 - 0.985, 0.984 - 0.988, 0.983 - 0.986])
    assert line.startswith("t: the best dynamic form by mean best validation accuracy, "
                           f"`p4m_dgcnn_wide`, 0.9823 +- 0.0021 (3 seeds), against "
                           f"0.9863 +- 0.0015 for `p4m_gcnn` (paired difference "
                           f"{d.mean():+.4f}, p ")
    assert line.endswith("no dynamic form beats `p4m_gcnn` in mean best validation accuracy "
                         "with its banks apart (bank common share < 0.5).")
    table = sweep.selection_markdown(rows, "t", "p4m_gcnn", "val_accuracy_max").splitlines()
    assert table[2].startswith("| variant | seeds | val best accuracy per seed |")
    assert table[2].endswith("| vs `p4m_gcnn`: best accuracy difference (p) / AUC p |")
    paired = rows[1]["paired"]["p4m_gcnn"]
    assert table[5].startswith("| `p4m_dgcnn_wide` | 3 | 0.9800 / 0.9840 / 0.9830 |")
    assert table[5].endswith(f"| {d.mean():+.4f} ({paired['val_accuracy_max_p']:.3f}) / "
                             f"{paired['val_auc_p']:.3f} (3 seeds) |")
    assert table[-1] == table[5]  # one comparison: nothing to adjust, no Holm line
    # a second dynamic form: both p-values against the static net, Holm-adjusted below
    odd = runs("p4m_odgcnn", [0.9993, 0.9994, 0.9995], [0.975, 0.979, 0.978], 0.9)
    rows = sweep.selection_rows(static + wide + odd, ["p4m_gcnn", "p4m_dgcnn_wide",
                                                      "p4m_odgcnn"], "p4m_gcnn")
    acc = {name: [r["val_accuracy_max"] for r in rs]
           for name, rs in (("g", static), ("w", wide), ("o", odd))}
    p_w = scipy_stats.ttest_rel(acc["w"], acc["g"]).pvalue
    p_o = scipy_stats.ttest_rel(acc["o"], acc["g"]).pvalue
    low, high = sorted((p_w, p_o))
    adjusted = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), high)}
    table = sweep.selection_markdown(rows, "t", "p4m_gcnn", "val_accuracy_max").splitlines()
    assert table[-2:] == [
        "", "Paired p of the best accuracy difference against `p4m_gcnn`, Holm-adjusted over "
        f"the 2 comparisons: `p4m_dgcnn_wide` {p_w:.3f} -> {adjusted[p_w]:.3f}, "
        f"`p4m_odgcnn` {p_o:.3f} -> {adjusted[p_o]:.3f}."]
    with pytest.raises(ValueError, match="metric: expected one of val_auc, val_accuracy_max"):
        sweep.selection_markdown(rows, "t", "p4m_gcnn", "val_nll")


def test_select_refuses_a_reference_it_does_not_train(capsys):
    from experiments import select

    with pytest.raises(SystemExit) as exit_:
        select.main(["--variants", "cnn", "p4m_dgcnn_wide", "--reference", "p4m_gcnn"])
    assert exit_.value.code == 2
    assert "--reference: 'p4m_gcnn' is not one of --variants (cnn p4m_dgcnn_wide)" in \
        capsys.readouterr().err


def test_selection_summary_leaves_out_entropies_recorded_negative(tmp_path):
    from experiments.training import Workdir

    def run(name, entropies, without_flops=None):
        work = Workdir(tmp_path / name)
        work.path.mkdir()
        results = {"val": {"auc": 0.9, "confusion_matrix": [[1, 0], [0, 1]]},
                   "best_epoch": 1, "num_params": 10, "train_seconds": 1.0, "finished": True}
        (work.path / "results.json").write_text(json.dumps(
            {**results, **without_flops} if without_flops else {**results, "forward_flops": 100}))
        layers = [{"layer": f"convs/{i}", "bank_common_share": 0.5, "attention_entropy": e}
                  for i, e in enumerate(entropies)]
        (work.path / "metrics.jsonl").write_text(json.dumps(
            {"val_auc": 0.9, "val_accuracy": 0.8, "dynamic_layers": layers}) + "\n")
        task = sweep.Task("idc", "p4m_odgcnn", 0, validation_only=True)
        return sweep.summary(task, task.config(get_config()), work)

    assert run("now", [0.5, 1.0])["attention_entropy"] == pytest.approx(0.75)
    # a run trained before every results.json held its FLOPs: counted at the run's own
    # view (IDC: 24 px, 3 channels), not at the model family's (28 px, 1 channel)
    from dgcnn_jax import models
    from experiments.configs import model_kwargs

    old = run("old", [0.5], {"input_size": 24, "normalization": {"mean": [0.5] * 3}})
    options = model_kwargs(sweep.Task("idc", "p4m_odgcnn", 0).config(get_config()))
    assert old["forward_flops"] == models.flops_per_image(
        "p4m_odgcnn", num_classes=2, input_size=24, in_channels=3, **options) != \
        models.flops_per_image("p4m_odgcnn", num_classes=2, **options)
    # a signed mix recorded before entropies counted magnitude shares: impossible values
    before = run("before", [0.5, -16.0])
    assert "attention_entropy" not in before and before["bank_common_share"] == 0.5
    # the table says over how many seeds such a value is
    rows = sweep.selection_rows([{**before, "seed": 0}, {**run("seed1", [1.0]), "seed": 1}],
                                ["p4m_odgcnn"], "p4m_odgcnn")
    assert "| 1.000 +- 0.000 (1 of 2 seeds) |" in sweep.selection_markdown(rows, "t", "x")


@pytest.mark.slow
def test_select_runs_on_validation_only(tmp_path, medmnist_dir):
    from experiments import select

    rows = select.main(["--workdir", str(tmp_path), "--dataset", "breastmnist", "--variants",
                        "p4m_gcnn", "--seeds", "0", "--workers", "1",
                        "--set", "epochs=1", "--set", "steps_per_epoch=2",
                        "--set", "plots=false", "--set", "eval_batch_size=160",
                        "--set", f"data_dir={medmnist_dir}",
                        "--results", str(tmp_path / "results" / "selection.json")])
    work = tmp_path / "breastmnist" / "p4m_gcnn" / "seed0"
    results = json.loads((work / "results.json").read_text())
    assert results["test"] is None and not (work / "test_probs.npy").exists()
    assert results["train_images_per_second"] > 0  # training's throughput, test split or not
    from dgcnn_jax import models  # counted for validation-only runs too, at the run's view

    assert results["forward_flops"] == models.flops_per_image("p4m_gcnn", num_classes=2)
    assert rows[0]["variant"] == "p4m_gcnn" and rows[0]["seeds"] == 1
    assert rows[0]["val_auc_mean"] == pytest.approx(results["val"]["auc"])
    assert (tmp_path / "selection_breastmnist.md").is_file()
    from experiments import report  # the committed form: a generated block renders it

    block = report.render_block("results/selection.json", "selection", tmp_path)
    assert block == (tmp_path / "selection_breastmnist.md").read_text().strip()
    assert "workdir" not in (tmp_path / "results" / "selection.json").read_text()
    # --no-train tabulates what is finished and trains nothing (seed 1 is missing)
    again = select.main(["--workdir", str(tmp_path), "--dataset", "breastmnist", "--variants",
                         "p4m_gcnn", "--seeds", "0", "1", "--no-train",
                         "--set", "epochs=1", "--set", "steps_per_epoch=2",
                         "--set", "plots=false", "--set", "eval_batch_size=160",
                         "--set", f"data_dir={medmnist_dir}"])
    assert again[0]["seeds"] == 1 and again[0]["val_auc_mean"] == rows[0]["val_auc_mean"]
    assert not (tmp_path / "breastmnist" / "p4m_gcnn" / "seed1").exists()
    with pytest.raises(ValueError, match="score_test: the sweep reports test metrics"):
        from experiments import compare
        compare.main(["--workdir", str(tmp_path), "--models", "cnn", "--set",
                      "score_test=false"])


@pytest.mark.slow
def test_learning_curves_sweep(tmp_path, medmnist_dir, monkeypatch):
    from experiments import compare

    monkeypatch.chdir(tmp_path)
    argv = ["--workdir", "curves", "--datasets", "breastmnist", "--models", "cnn",
            "p4m_gcnn", "--fractions", "0.3", "1", "--seeds", "0", "1",
            "--set", "steps_per_epoch=3", "--set", "epochs=2", "--set", "batch_size=16",
            "--set", "input_size=16", "--set", "progress=false", "--set", "plots=false",
            "--set", "eval_batch_size=160",
            "--set", f"data_dir={medmnist_dir}",
            "--results", "results/curves.json", "--figure", "docs/curves.png"]
    doc = compare.main(argv)
    out = tmp_path / "curves"
    for name in ("curves.json", "curves.md", "curves.png"):
        assert (out / name).is_file(), name
    assert (tmp_path / "docs" / "curves.png").is_file()
    assert json.loads((tmp_path / "results" / "curves.json").read_text()) == doc
    assert doc["protocol"]["steps"] == 6 and doc["protocol"]["config"]["steps_per_epoch"] == 3
    sizes = {}
    for run in doc["runs"]:  # every run the same steps, the subset stored with it
        work = out / f"fraction{run['train_fraction']:g}" / "breastmnist" / run["model"] / \
            f"seed{run['seed']}"
        results = json.loads((work / "results.json").read_text())
        assert results["steps"] == 6 and results["train_fraction"] == run["train_fraction"]
        assert not (work / "eval_test.json").exists()  # no D4 scoring in a curve sweep
        sizes.setdefault(run["train_fraction"], set()).add(results["num_train"])
    assert {f: len(n) for f, n in sizes.items()} == {0.3: 1, 1.0: 1}  # one subset a fraction
    assert sizes[1.0] == {546} and 0.25 * 546 < min(sizes[0.3]) < 0.35 * 546
    rows = {(r["train_fraction"], r["model"]): r for r in doc["summary"]}
    assert len(rows) == 4
    acc = [run["test_accuracy"] for run in doc["runs"]
           if (run["train_fraction"], run["model"]) == (0.3, "cnn")]
    assert rows[0.3, "cnn"]["accuracy"]["mean"] == pytest.approx(np.mean(acc))
    assert rows[0.3, "cnn"]["error"]["mean"] == pytest.approx(1 - np.mean(acc))
    tests = {(t["train_fraction"], t["a"], t["b"]) for t in doc["tests"]}
    assert tests == {(0.3, "p4m_gcnn", "cnn"), (1.0, "p4m_gcnn", "cnn")}
    # finished runs are kept: --no-train rebuilds the same tables
    again = compare.main([*argv, "--no-train"])
    assert again["summary"] == doc["summary"]


def test_learning_curves_default_to_the_curve_runs_on_pbc():
    from experiments import compare

    args = compare.parse_args(["--fractions", "0.01", "1"])
    assert args.datasets == ["pbc"] and args.models == list(sweep.CURVE_RUNS)
    # the primary comparisons are among the curve runs
    assert ("p4m_dgcnn_wide", "p4m_gcnn") in sweep.COMPARISONS
    assert ("p4m_gcnn", "cnn_augment") in sweep.COMPARISONS
    base = dataclasses.replace(get_config(), train_fraction=0.01, steps_per_epoch=50,
                               pipeline="device")
    for name in sweep.CURVE_RUNS:  # every curve run is a valid config at a fraction
        validate(sweep.run_config(base, "pbc", name, 0))


def test_a_pool_run_gets_exactly_its_config_on_the_command_line():
    """The pool starts ``python -m experiments.train --set ...`` per run: the items it
    passes make the run's config from the default one, whatever the field types."""
    from experiments.configs import override

    base = override(get_config(), ["learning_rate=0.001", "augment=true",
                                   "bank_weight_decay=none", "data_dir=/tmp/x y"])
    for name in ("cnn_augment", "dgcnn_wide_all_but_stem", "p4m_dgcnn_no_anneal"):
        task = sweep.Task("pbc", name, 3, 0.25, validation_only=True)
        config = task.config(base)
        assert override(get_config(), sweep.config_sets(config)) == config
    with pytest.raises(ValueError, match="mode: expected one of process, together, pool"):
        sweep.train([], "threads")
