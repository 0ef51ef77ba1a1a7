"""Training-step time without and with glibc's huge pages, measured in pairs of processes.

    python -m experiments.hugepages --models cnn p4m_gcnn --pairs 2 --repeats 8 \
        --out results/hugepages_cpu.json [--how "one core, shared with a niced run"]

glibc reads ``GLIBC_TUNABLES`` once, when a process starts, so each setting needs a
process of its own: for every model and pair this starts ``experiments.benchmark``
(one training step at batch 32, ``--skip-layers --job-epochs 0``) once with
``glibc.malloc.hugetlb=0`` and once with ``=1`` (the order alternates from pair to pair,
so drift on a shared machine falls on both), and records the benchmark's median step
time and the process's minor page faults (``os.wait4``; compile included). The document
holds every process's figures and per model the median over pairs and the ratio;
:func:`markdown` renders the table that ``experiments.report`` writes into
docs/performance.md (block kind ``hugepages``). The sweep engine sets the tunable for its
training processes (:func:`experiments.sweep.execute.child_env`).
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

from experiments import cli

__all__ = ["SETTINGS", "setting_env", "run_benchmark", "measure", "markdown", "main"]

SETTINGS = ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=1")
"""Without and with transparent huge pages for malloc, in that order."""


def setting_env(setting: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default ``os.environ``) with ``GLIBC_TUNABLES`` holding ``setting`` in
    place of any ``glibc.malloc.hugetlb`` entry it had; other tunables stay (the sweep
    engine's :func:`experiments.sweep.execute.child_env`, replacing the caller's value)."""
    from experiments.sweep.execute import child_env

    return child_env(environ, setting=setting, replace=True)


def run_benchmark(model: str, setting: str, repeats: int, cpu: int | None = None) -> dict:
    """One process of ``experiments.benchmark`` timing a training step of ``model`` with
    ``setting``: its median step (s), the batch it timed and the process's minor page
    faults."""
    with tempfile.TemporaryDirectory() as folder:
        out = pathlib.Path(folder) / "benchmark.json"
        command = [sys.executable, "-m", "experiments.benchmark", "--skip-layers",
                   "--job-epochs", "0", "--models", model, "--repeats", str(repeats),
                   "--output", str(out)]
        if cpu is not None:
            command = ["taskset", "-c", str(cpu)] + command
        process = subprocess.Popen(command, env=setting_env(setting),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"benchmark of {model} with {setting} failed "
                               f"(exit {process.returncode}): {stderr.decode()[-2000:]}")
        row = json.loads(out.read_text())["rows"][0]
    return {"median_s": row["median_s"], "minor_faults": usage.ru_minflt,
            "batch": round(row["images_per_s"] * row["median_s"])}


def measure(models: list[str], pairs: int, repeats: int, cpu: int | None = None,
            how: str = "", runner=run_benchmark) -> dict:
    """The document: for each model ``pairs`` pairs of processes, one per setting of
    :data:`SETTINGS`, the order alternating; ``runner(model, setting, repeats, cpu)``
    runs one (a test passes its own)."""
    from experiments import report

    if pairs < 1 or repeats < 1:
        raise ValueError(f"pairs and repeats: expected at least 1, got {pairs}, {repeats}")
    rows = []
    for model in models:
        runs = {s: [] for s in SETTINGS}
        for pair in range(pairs):
            for setting in (SETTINGS if pair % 2 == 0 else SETTINGS[::-1]):
                runs[setting].append(runner(model, setting, repeats, cpu))
                print(f"{model:20s} {setting:24s} "
                      f"{runs[setting][-1]['median_s'] * 1e3:8.1f} ms  "
                      f"{runs[setting][-1]['minor_faults']:>10,} minor faults", flush=True)
        off, on = (statistics.median(r["median_s"] for r in runs[s]) for s in SETTINGS)
        rows.append({"model": model, "runs": runs, "without_s": off, "with_s": on,
                     "ratio": on / off})
    batches = {r["batch"] for row in rows for side in row["runs"].values() for r in side}
    return {"rows": rows, "pairs": pairs, "repeats": repeats, "batch": min(batches),
            "how": how, "machine": report.machine()}


def markdown(doc: dict) -> str:
    """The table: per model the median step without and with huge pages (over pairs),
    their ratio, each process's step time and minor faults."""
    lines = ["| model | without (ms) | with (ms) | with / without | steps without / with "
             "(ms, each process) | minor faults without / with (each process) |",
             "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        off, on = (r["runs"][s] for s in SETTINGS)
        steps = " / ".join(", ".join(f"{x['median_s'] * 1e3:.0f}" for x in side)
                           for side in (off, on))
        faults = " / ".join(", ".join(f"{x['minor_faults']:,}" for x in side)
                            for side in (off, on))
        lines.append(f"| `{r['model']}` | {r['without_s'] * 1e3:.1f} | {r['with_s'] * 1e3:.1f} "
                     f"| {r['ratio']:.2f} | {steps} | {faults} |")
    machine = doc["machine"]
    how = f", {doc['how']}" if doc.get("how") else ""
    lines += ["", f"One training step at batch {doc['batch']}, median of {doc['repeats']} "
                  f"per process, {doc['pairs']} pairs of processes per model; measured on "
                  f"{machine.get('cpu') or machine.get('processor') or 'a CPU'} "
                  f"({machine.get('cpus', '?')} cores, JAX {machine.get('jax', '?')}){how}."]
    return "\n".join(lines)


def main(argv=None):
    p = cli.Parser(__doc__)
    p.add_argument("--models", nargs="+", default=["cnn", "p4m_gcnn", "p4m_dgcnn_wide"],
                   help="registered models to time")
    p.add_argument("--pairs", type=int, default=2, help="pairs of processes per model")
    p.add_argument("--repeats", type=int, default=8, help="timed steps per process")
    p.add_argument("--cpu", type=int, default=None, help="pin the processes to this core")
    p.add_argument("--how", default="", help="how the machine was shared, for the note")
    p.add_argument("--out", required=True, help="the JSON document to write")
    args = p.parse_args(argv)
    doc = measure(args.models, args.pairs, args.repeats, args.cpu, args.how)
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    cli.run(main, "experiments.hugepages")
