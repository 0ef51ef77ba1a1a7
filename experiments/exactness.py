"""Exactness and cost of every registered model at each precision, on this backend.

    python -m experiments.exactness [--data-dir DIR] [--images 32] [--repeats 10]
        [--precisions highest default] [--impls auto orbit] [--dtypes float32 bfloat16]
        [--models cnn p4m_gcnn ...] [--output FILE.json]

For each model, precision (:data:`dgcnn_jax.execution.PRECISIONS`), execution (``auto``,
the filter bank, or ``orbit``) and computation dtype (float32 or bfloat16, float32
parameters): the invariance
error of the logits on real BreastMNIST test images under every element of the model's
group (``max |f(L_g x) - f(x)| / max |f(x)|``, the largest over the elements; the plain
CNNs are measured under the p4m elements as a negative control) and the median time of a
forward and backward pass (gradient of the loss with respect to the parameters) on a
batch of those images. The 96 px models get the images resized to 96 px. Models are
freshly initialised (seed 0) in training mode off: exactness does not depend on training.

Reads ``breastmnist.npz`` with numpy from ``--data-dir`` or the ``DGCNN_DATA_DIR``
folders (no grain or TFDS needed, so it runs on a bare accelerator image). Prints a table
and writes JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dgcnn_jax import P4M, execution, get_group, models
from dgcnn_jax.testing import equivariance_errors
from experiments import cli

__all__ = ["real_images", "measure", "table", "markdown", "markdown_headline", "main"]

RTOL = 1e-5  # the library's promise: float32 equivariance error relative to the output


def real_images(data_dir: str | None, count: int) -> np.ndarray:
    """The first ``count`` BreastMNIST test images, float32 ``[N, 28, 28, 1]`` in [0, 1]."""
    folders = [data_dir] if data_dir else os.environ.get("DGCNN_DATA_DIR", "").split(os.pathsep)
    for folder in filter(None, folders):
        path = pathlib.Path(folder) / "breastmnist.npz"
        if path.is_file():
            with np.load(path) as archive:
                return archive["test_images"][:count, :, :, None].astype(np.float32) / 255.0
    raise FileNotFoundError(f"breastmnist.npz not found in {folders}: pass --data-dir")


def measure(name: str, precision: str, images: np.ndarray, repeats: int, *,
            impl: str = "auto", dtype: str = "float32") -> dict:
    """Invariance error and fwd+bwd time of one model at one precision, execution and
    computation dtype."""
    spec = models.spec(name)
    x = jnp.asarray(images)
    if spec.input_size != x.shape[1]:
        x = jax.image.resize(x, (x.shape[0], spec.input_size, spec.input_size, 1), "linear")
    model = models.create(name, num_classes=2, in_channels=1, rngs=nnx.Rngs(0),
                          precision=precision, impl=impl, dtype=dtype)
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def logits(params, x):
        return nnx.merge(graphdef, params, rest)(x, tau=1.0)

    @jax.jit
    def grads(params, x):
        return jax.grad(lambda p: jnp.mean(logits(p, x) ** 2))(params)

    group = spec.group if spec.group != "z2" else P4M  # a plain CNN: the negative control
    errors = equivariance_errors(lambda v: logits(params, v), get_group(group), x,
                                 input_kind="image", output_kind="invariant")
    jax.block_until_ready(grads(params, x))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(grads(params, x))
        times.append(time.perf_counter() - start)
    return {"model": name, "precision": precision, "impl": impl, "dtype": dtype,
            "group": get_group(group).name,
            "invariance_error": float(errors.max()),
            "exact": bool(errors.max() <= RTOL) if spec.group != "z2" else None,
            "fwd_bwd_ms": 1e3 * float(np.median(times)), "batch": int(x.shape[0]),
            "input_size": int(x.shape[1])}


def main(argv=None) -> list[dict]:
    p = cli.Parser(__doc__)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--precisions", nargs="+", default=list(execution.PRECISIONS),
                   choices=list(execution.PRECISIONS))
    p.add_argument("--impls", nargs="+", default=["auto"], choices=["auto", "orbit"])
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    p.add_argument("--models", nargs="+", default=list(models.available()),
                   choices=list(models.available()))
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    images = real_images(args.data_dir, args.images)
    backend = jax.default_backend()
    print(f"JAX {jax.__version__} on {backend} ({jax.devices()[0].device_kind}); "
          f"{len(images)} BreastMNIST test images", flush=True)
    settings = [(q, impl, dt) for q in args.precisions for impl in args.impls
                for dt in args.dtypes]
    rows = []
    for name in args.models:
        for q, impl, dt in settings:
            rows.append({**measure(name, q, images, args.repeats, impl=impl, dtype=dt),
                         "backend": backend, "device": jax.devices()[0].device_kind,
                         "jax": jax.__version__})
            r = rows[-1]
            if args.output:  # after every row: a run stopped at a time limit keeps its rows
                pathlib.Path(args.output).write_text(json.dumps(rows, indent=2))
            print(f"{name:20s} {_label(q, impl, dt):22s} invariance error "
                  f"{r['invariance_error']:.2e} ({_verdict(r)})  fwd+bwd "
                  f"{r['fwd_bwd_ms']:8.2f} ms", flush=True)
    print()
    print(table(rows))
    claimed = [r for r in rows if r["exact"] is not None and r["precision"] == "highest"
               and r["dtype"] == "float32"]
    print(f"\nat the default precision (highest), float32: {sum(r['exact'] for r in claimed)} "
          f"of {len(claimed)} group model settings within {RTOL:g}")
    return rows


def _label(precision: str, impl: str, dtype: str) -> str:
    return f"{precision} {'filter bank' if impl == 'auto' else impl} {dtype}"


def _verdict(row: dict) -> str:
    return "control" if row["exact"] is None else "ok" if row["exact"] else "NOT EXACT"


def markdown(rows: list[dict]) -> str:
    """:func:`table` and a line saying where and how ``rows`` were measured."""
    r = rows[0]
    return (table(rows) + f"\n\nInvariance error: `max |f(L_g x) - f(x)| / max |f(x)|` of the "
            f"logits over every element (p4m for the plain cnn, a negative control); ms: "
            f"median forward + backward pass, batch {r['batch']} at {r['input_size']} px. "
            f"Measured by `python -m experiments.exactness` on {r['device']} ({r['backend']}, "
            f"JAX {r['jax']}).")


def markdown_headline(rows: list[dict], model: str = "p4m_dgcnn") -> str:
    """One model's rows (``p4m_dgcnn``): a setting per row, its error and time."""
    mine = [r for r in rows if r["model"] == model]
    lines = [f"| `{model}`, fresh, eval mode | invariance error | fwd+bwd (ms) |", "|---|---|---|"]
    lines += [f"| {_label(r['precision'], r['impl'], r['dtype'])} | {r['invariance_error']:.1e} "
              f"| {r['fwd_bwd_ms']:.1f} |" for r in mine]
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    """Markdown: a row per model, an error and a time column per setting of ``rows``."""
    settings = list(dict.fromkeys((r["precision"], r["impl"], r["dtype"]) for r in rows))
    names = list(dict.fromkeys(r["model"] for r in rows))
    lines = [f"| model | {' | '.join(f'{_label(*s)} error | ms' for s in settings)} |",
             f"|---|{'---:|---:|' * len(settings)}"]
    for name in names:
        cells = []
        for s in settings:
            r = next((r for r in rows if r["model"] == name
                      and (r["precision"], r["impl"], r["dtype"]) == s), None)
            cells += [f"{r['invariance_error']:.1e}", f"{r['fwd_bwd_ms']:.1f}"] if r \
                else ["", ""]  # not measured
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    cli.run(main, "experiments.exactness")
