"""Nothing silently wrong, every user error in one line: the command lines as a new user
meets them (small settings, real subprocesses)."""

import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from tests.training_helpers import FAST, ROOT


def _default_sigint():
    """In the child before exec: SIGINT's default action (a background job of a shell
    inherits it ignored, and Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _command(module, args, env_extra=None, data_dir=None, wait=True):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    if data_dir is not None:
        env["DGCNN_DATA_DIR"] = str(data_dir)
    cmd = [sys.executable, "-m", f"experiments.{module}", *map(str, args)]
    if not wait:  # SIGINT as a terminal sends it, even where the tests run with it ignored
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _one_line_error(out, code=2, *needles):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert len(lines) == 1, out.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.slow
def test_the_sweep_finishes_a_smoke_run_instead_of_reporting_it(tmp_path, medmnist_dir):
    args = ["--workdir", tmp_path / "sweep", "--datasets", "breastmnist", "--models", "cnn",
            "--seeds", "0", "--set", "epochs=1", "--set", "train_fraction=0.25",
            "--set", f"data_dir={medmnist_dir}"]
    smoke = _command("compare", args + ["--set", "max_steps=2"])
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    results = tmp_path / "sweep" / "breastmnist" / "cnn" / "seed0" / "results.json"
    assert json.loads(results.read_text())["finished"] is False
    real = _command("compare", args)
    assert real.returncode == 0, real.stdout + real.stderr
    done = json.loads(results.read_text())
    assert done["finished"] is True and done["steps"] == 4  # 137 images: 4 steps of 32
    assert "resuming from step 2" in real.stdout


def test_negative_max_steps_and_no_workers_are_refused(tmp_path):
    _one_line_error(_command("train", ["--workdir", tmp_path / "w", "--set", "max_steps=-1"]),
                    2, "max_steps: expected an int >= 0")
    assert not (tmp_path / "w").exists()
    _one_line_error(_command("select", ["--workdir", tmp_path / "s", "--workers", "0"]), 2,
                    "--workers: expected a number of processes >= 1, got 0")
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_user_errors_end_in_one_line_with_exit_code_2(tmp_path, medmnist_dir):
    train = ["--set", "model=cnn", "--set", "epochs=1", "--set", "progress=false"]
    # the data file: damaged (its checksum differs)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "breastmnist.npz").write_bytes(
        (medmnist_dir / "breastmnist.npz").read_bytes()[:5000])
    _one_line_error(_command("train", ["--workdir", tmp_path / "a", *train], data_dir=damaged),
                    2, "breastmnist.npz")
    # the work directory: a file, a path under a file, an invalid config.json
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _one_line_error(_command("train", ["--workdir", blocker, *train], data_dir=medmnist_dir),
                    2, f"{blocker} is a file")
    _one_line_error(_command("train", ["--workdir", blocker / "run", *train],
                             data_dir=medmnist_dir), 2, "a_file")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    _one_line_error(_command("evaluate", ["--workdir", broken]), 2,
                    f"{broken / 'config.json'}: not valid JSON")
    # the top folder of seeds trained together points at a seed's folder
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "config.json").write_text(json.dumps({"seeds": "0,1"}))
    _one_line_error(_command("evaluate", ["--workdir", seeds]), 2, f"{seeds / 'seed0'}")
    # a setting that fails only once the data is open; nothing is left behind
    _one_line_error(_command("train", ["--workdir", tmp_path / "tiny", *train, "--set",
                                       "train_fraction=0.01"], data_dir=medmnist_dir),
                    2, "batch_size: 32 exceeds the")
    assert not (tmp_path / "tiny").exists()
    # report: invalid JSON, another schema, an output path under a file
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    _one_line_error(_command("report", [bad]), 2, f"{bad}: not a results file")
    bad.write_text(json.dumps({"dataset": "pbc"}))
    _one_line_error(_command("report", [bad]), 2, f"{bad}: not a results file")
    good = ROOT / "results" / "pbc_curves.json"
    _one_line_error(_command("report", [good, "--out", blocker / "x.md"]), 2, "a_file")
    # --debug shows the traceback for a bug report
    debug = _command("evaluate", ["--workdir", broken, "--debug"])
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.slow
def test_ctrl_c_prints_how_to_resume(tmp_path, medmnist_dir):
    # a run far longer than the test (a signal that lands after the last epoch, while the
    # interpreter shuts down, would test nothing), interrupted once its first epoch is out
    work = tmp_path / "run"
    sets = [*FAST, "epochs=500"]
    proc = _command("train", ["--workdir", work, *[a for s in sets for a in ("--set", s)]],
                    data_dir=medmnist_dir, wait=False)
    first = proc.stdout.readline()
    assert first.startswith("epoch 1/500"), (first, proc.stderr.read() if not first else "")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 130, (out, err)
    assert len(lines) == 1 and lines[0].startswith("interrupted:"), err
    assert f"python -m experiments.train --workdir {work}" in lines[0]


@pytest.mark.slow
def test_data_and_checkpoint_errors_end_in_one_line(tmp_path, medmnist_dir, pbc_raw_sample):
    from dgcnn_jax.data import pbc

    train = ["--set", "model=cnn", "--set", "epochs=1", "--set", "progress=false"]
    # a missing archive that is never downloaded: the command that builds it
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(_command("train", ["--workdir", tmp_path / "a", *train, "--set",
                                       "dataset=pbc"], data_dir=empty),
                    2, "pbc28.npz not found", "experiments.prepare_data pbc")
    # an archive built locally from other files: its checksum differs from the published one
    pbc.build(pbc_raw_sample, tmp_path / "built")
    _one_line_error(_command("train", ["--workdir", tmp_path / "b", *train, "--set",
                                       "dataset=pbc"], data_dir=tmp_path / "built"),
                    2, "MD5 checksum mismatch")
    # a finished run whose best checkpoint was deleted
    work = tmp_path / "run"
    sets = [*train, "--set", "steps_per_epoch=2"]
    first = _command("train", ["--workdir", work, *sets], data_dir=medmnist_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    shutil.rmtree(work / "checkpoints" / "best")
    _one_line_error(_command("train", ["--workdir", work, *sets], data_dir=medmnist_dir),
                    2, "checkpoints/best")
    _one_line_error(_command("evaluate", ["--workdir", work]), 2, "no best checkpoint in")


@pytest.mark.slow
def test_ctrl_c_while_a_dataset_is_built_leaves_nothing(tmp_path, pbc_raw_sample):
    # a folder big enough to interrupt: each sample file 100 times (5,300 files, 95 MB),
    # made unique by trailing bytes (JPEG decoders stop at the end-of-image marker), so
    # that every copy is decoded
    root = tmp_path / "root"
    for path in pbc_raw_sample.rglob("*.jpg"):
        folder = root / path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        for i in range(100):
            (folder / f"{path.stem}_{i}.jpg").write_bytes(data + i.to_bytes(2, "big"))
    out = tmp_path / "out"
    # stderr on a terminal: the progress bar shows, and says when the images are read
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.prepare_data", "pbc",
                             "--root", str(root), "--data-dir", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=terminal, preexec_fn=_default_sigint)
    os.close(terminal)
    shown = b""
    deadline = time.time() + 120
    while time.time() < deadline and not re.search(rb"pbc28: +[0-9]+%.* [1-9][0-9]*/5300", shown):
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                shown += os.read(master, 4096)
            except OSError:  # the process ended
                break
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    while True:  # the rest of what it wrote
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    text = shown.decode(errors="replace")
    lines = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
    assert proc.returncode == 130, text
    assert "/5300" in text  # the bar counted the files
    assert lines[-1].startswith("interrupted: nothing was written"), text
    assert "Traceback" not in text
    assert not out.exists() or list(out.iterdir()) == []
