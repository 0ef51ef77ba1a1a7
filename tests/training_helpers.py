"""Helpers of the training and sweep tests: the command line in a subprocess, results
compared to a tolerance, a small fast configuration, and synthetic finished runs."""

import contextlib
import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from dgcnn_jax import metrics
from experiments.configs import get_config
from experiments.sweep import Task
from experiments.training import Workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A small, fast configuration: 2 epochs of p4_dgcnn on a quarter of BreastMNIST's
# training split (137 images, 8 steps of 16 an epoch), the temperature annealed over the
# first, no figures (tests of the figures ask for them), evaluation batches of 160 (the
# test split is 156 images, validation 78).
FAST = ["model=p4_dgcnn", "epochs=2", "batch_size=16", "progress=false", "plots=false",
        "train_fraction=0.25", "tau_anneal_fraction=0", "tau_anneal_epochs=1",
        "eval_batch_size=160", "input_size=16"]
"""A small run for the tests of the trainer: 8 steps of 16 images an epoch, on the
centred 16 px view of BreastMNIST (a third of the pixels: its programs compile and run
in about half the time of the 28 px images')."""


def run_train(workdir, data_dir, sets, env_extra=None, wait=True, process=False):
    """The training command on ``workdir``: in this process (a ``CompletedProcess`` with
    its exit code and output, the compiled programs cached for the next run), or in a
    process of its own for ``process=True``, other environment variables (``env_extra``)
    or ``wait=False`` (the ``Popen``)."""
    cmd = [sys.executable, "-m", "experiments.train", "--workdir", str(workdir)]
    for s in sets:
        cmd += ["--set", s]
    if wait and not process and env_extra is None:
        return train_here(cmd[3:], data_dir)
    env = {**os.environ, "DGCNN_DATA_DIR": str(data_dir), "JAX_PLATFORMS": "cpu",
           **(env_extra or {})}
    if wait:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def train_here(argv, data_dir):
    """``python -m experiments.train ARGV`` in this process, ending as the command does
    (:func:`experiments.cli.call`): exit code, stdout and stderr."""
    from experiments import cli, train

    out, err = io.StringIO(), io.StringIO()
    before = os.environ.get("DGCNN_DATA_DIR")
    os.environ["DGCNN_DATA_DIR"] = str(data_dir)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code, line = cli.call(train.main, "experiments.train", list(argv))
            if line is not None:
                print(line, file=sys.stderr)
    finally:
        if before is None:
            del os.environ["DGCNN_DATA_DIR"]
        else:
            os.environ["DGCNN_DATA_DIR"] = before
    return subprocess.CompletedProcess(["experiments.train", *argv], code, out.getvalue(),
                                       err.getvalue())


def comparable(results):
    drop = {"train_seconds", "train_images_per_second", "eval_images_per_second"}
    return {k: v for k, v in results.items() if k not in drop}


def assert_close(a, b, tol=1e-6):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close(a[k], b[k], tol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_close(x, y, tol)
    elif isinstance(a, float):
        assert abs(a - b) <= tol * max(1.0, abs(a)), (a, b)
    else:
        assert a == b


def history(work):
    return [json.loads(line) for line in (work / "metrics.jsonl").open()]


def stop_and_resume(work, data_dir, sets, stop, full):
    """A run stopped by ``max_steps=stop`` is unfinished at an exact position, still scores
    end to end, and resumed without the limit ends equal to the uninterrupted run in
    ``full`` (8 steps an epoch, as FAST has)."""
    first = run_train(work, data_dir, sets + [f"max_steps={stop}"])
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"stopped at step {stop} (max_steps)" in first.stdout
    stopped = json.loads((work / "results.json").read_text())
    assert stopped["finished"] is False and stopped["steps"] == stop
    assert stopped["position"] == {"epoch": stop // 8, "batch": stop % 8}
    assert stopped["test"] is not None  # a smoke run still scores end to end
    assert history(work)[-1]["partial"] is True
    again = run_train(work, data_dir, sets)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming from step {stop}" in again.stdout
    got = json.loads((work / "results.json").read_text())
    want = json.loads((full / "results.json").read_text())
    assert got["finished"] is True and got["steps"] == want["steps"]
    assert_close(comparable(got), comparable(want), tol=1e-6)
    assert_close(history(work), history(full), tol=1e-6)


N = 120  # test images of the synthetic runs


def finished_run(path, name, seed, skill, config=None):
    """A finished, tested run's folder as training leaves it: two classes, test
    probabilities whose quality grows with ``skill``; ``config``: the one it was trained
    with (default: the default config on IDC)."""
    rng = np.random.default_rng(seed + 100 * len(name))
    labels = np.arange(N) % 2
    logit = skill * (2 * labels - 1) + rng.normal(size=N)
    p1 = 1 / (1 + np.exp(-logit))
    probs = np.stack([1 - p1, p1], axis=1)
    config = config or dataclasses.replace(get_config(), dataset="idc", model=name, seed=seed)
    test = metrics.classification_metrics(probs, labels)
    history = [{"epoch": e, "val_auc": 0.8 + 0.01 * e, "val_accuracy": 0.7 + 0.01 * e}
               for e in (1, 2)]
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    (path / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (path / "results.json").write_text(json.dumps({
        "finished": True, "best_epoch": 2, "num_params": 1000, "forward_flops": 2e6,
        "train_seconds": 10.0, "backend": "cpu", "num_train": 500,
        "val": {"auc": 0.82, "confusion_matrix": [[1, 0], [0, 1]]}, "test": test}))
    np.save(path / "test_probs.npy", probs.astype(np.float32))
    np.save(path / "test_labels.npy", labels)
    return Task("idc", name, seed), config, Workdir(path)
