"""Two processes on 127.0.0.1 (jax.distributed, CPU collectives over gloo): the same run
as one process on 2 host devices, resumed after a kill, and a clear stop when one dies."""

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import evaluate, training
from experiments.checkpoints import Checkpoints
from experiments.configs import Config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# 2 epochs of 8 steps (batch 64 of BreastMNIST's 546 training images), host pipeline
SETS = ["model=cnn", "epochs=2", "batch_size=64", "progress=false", "pipeline=host",
        "plots=false"]
LIMIT = 300  # seconds any launch may take before the test kills it
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data_dir, devices=1):
    return {**os.environ, "DGCNN_DATA_DIR": str(data_dir), "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _slurm_job_id() -> int:
    """A job id whose coordinator port (JAX: 61440 + id % 4096) is free here."""
    for job in np.random.default_rng().permutation(4096):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", 61440 + int(job)))
            return 4096 + int(job)
    raise RuntimeError("no free port in 61440-65535")


@contextlib.contextmanager
def _processes(workdir, data_dir, sets=SETS, slurm=False):
    """Two processes of one run; both killed on leaving, whatever happened. ``slurm``: the
    ids and coordinator come from SLURM's variables (JAX's cluster detection), else from
    the command-line options."""
    port, job = _free_port(), _slurm_job_id() if slurm else None
    procs = []
    try:
        for i in range(2):
            cmd = [sys.executable, "-m", "experiments.train", "--workdir", str(workdir),
                   "--distributed", "--heartbeat-timeout", "10"]
            env = _env(data_dir)
            if slurm:
                env.update(SLURM_JOB_ID=str(job), SLURM_STEP_NODELIST="127.0.0.1",
                           SLURM_NTASKS="2", SLURM_PROCID=str(i), SLURM_LOCALID=str(i))
            else:
                cmd += ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                        "--process-id", str(i)]
            for s in sets:
                cmd += ["--set", s]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          start_new_session=True))
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            p.stdout.close()
            p.stderr.close()


def _finish(procs) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=LIMIT)
        out.append((p.returncode, stdout, stderr))
    return out


def _final(workdir):
    """Parameters and batch statistics of the latest checkpoint, restored by this single
    process (one device), and the per-epoch records."""
    config = Config(**json.loads((workdir / "config.json").read_text()))
    config = Config(**{**config.__dict__, "num_devices": 1})
    mesh = training.make_mesh(config)
    state = training.create_train_state(config, 2, 1, 8, mesh)
    items, _ = Checkpoints.restore(Checkpoints(workdir).latest, {"model": state.model_item()})
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    return jax.tree.leaves(items["model"]), history


def _assert_same_run(a, b, tol=1e-6):
    (leaves_a, hist_a), (leaves_b, hist_b) = a, b
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)
    assert len(hist_a) == len(hist_b) == 2
    for ra, rb in zip(hist_a, hist_b):
        for key in ("train_loss", "val_auc", "val_accuracy", "val_nll"):
            assert ra[key] == pytest.approx(rb[key], rel=tol, abs=tol), key


def test_two_processes_equal_one_process_on_two_devices(tmp_path, medmnist_dir):
    """Launched as SLURM would (JAX detects the ids and the coordinator); the other test
    passes them as options."""
    cmd = [sys.executable, "-m", "experiments.train", "--workdir", str(tmp_path / "one")]
    for s in SETS:
        cmd += ["--set", s]
    one = subprocess.run(cmd, cwd=ROOT, env=_env(medmnist_dir, devices=2), text=True,
                         capture_output=True, timeout=LIMIT)
    assert one.returncode == 0, one.stdout + one.stderr
    with _processes(tmp_path / "two", medmnist_dir, slurm=True) as procs:
        (rc0, out0, err0), (rc1, out1, err1) = _finish(procs)
    assert rc0 == 0 and rc1 == 0, err0 + err1
    assert "epoch 2/2" in out0 and "epoch" not in out1  # process 0 reports, 1 does not
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["devices"] == 2
    _assert_same_run(_final(tmp_path / "two"), _final(tmp_path / "one"))
    # a single process reads the checkpoint the two wrote (digests checked) and scores it
    scored = evaluate.evaluate(tmp_path / "two", "test")
    assert scored["metrics"]["auc"] == pytest.approx(results["test"]["auc"], abs=1e-6)


def test_one_process_dying_stops_the_other_and_a_relaunch_resumes(tmp_path, medmnist_dir):
    with _processes(tmp_path / "full", medmnist_dir) as procs:
        assert all(rc == 0 for rc, _, _ in _finish(procs))
    work = tmp_path / "run"
    latest = work / "checkpoints" / "latest"
    with _processes(work, medmnist_dir) as procs:
        deadline = time.time() + LIMIT
        while time.time() < deadline and not (latest / "8" / "commit_success.txt").exists():
            assert all(p.poll() is None for p in procs), "a process ended before the kill"
            time.sleep(0.05)
        os.killpg(procs[1].pid, signal.SIGKILL)  # process 1 dies during epoch 2
        killed = time.time()
        stdout, stderr = procs[0].communicate(timeout=120)
        waited = time.time() - killed
    assert procs[0].returncode not in (0, None)
    print(f"process 0 stopped {waited:.1f} s after process 1 was killed")
    assert waited < 60, f"process 0 took {waited:.0f} s to stop"
    assert "error: process 0 of 2 stopped" in stderr or "another task died" in stderr, stderr
    assert not (work / "results.json").exists()
    with _processes(work, medmnist_dir) as procs:  # launched again: resumes from epoch 1
        (rc0, out0, err0), (rc1, _, err1) = _finish(procs)
    assert rc0 == 0 and rc1 == 0, err0 + err1
    assert "resuming from step 8" in out0
    _assert_same_run(_final(work), _final(tmp_path / "full"))
