"""Helpers of the training and sweep tests: the command line in a subprocess, results
compared to a tolerance, and a small fast configuration."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A small, fast configuration: 2 epochs of p4_dgcnn on half of BreastMNIST's training
# split (273 images, 8 steps of 32 an epoch), the temperature annealed over the first.
FAST = ["model=p4_dgcnn", "epochs=2", "batch_size=32", "progress=false",
        "train_fraction=0.5", "tau_anneal_fraction=0", "tau_anneal_epochs=1"]


def run_train(workdir, data_dir, sets, env_extra=None, wait=True):
    cmd = [sys.executable, "-m", "experiments.train", "--workdir", str(workdir)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "DGCNN_DATA_DIR": str(data_dir), "JAX_PLATFORMS": "cpu",
           **(env_extra or {})}
    if wait:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


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
