"""Exactness and cost of every registered model at each precision, on this backend.

    python -m experiments.exactness [--data-dir DIR] [--images 32] [--repeats 10]
        [--precisions highest default] [--models cnn p4m_gcnn ...] [--output FILE.json]

For each model and precision (:data:`dgcnn_jax.execution.PRECISIONS`): the invariance
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

__all__ = ["real_images", "measure", "main"]

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


def measure(name: str, precision: str, images: np.ndarray, repeats: int) -> dict:
    """Invariance error and fwd+bwd time of one model at one precision."""
    spec = models.spec(name)
    x = jnp.asarray(images)
    if spec.input_size != x.shape[1]:
        x = jax.image.resize(x, (x.shape[0], spec.input_size, spec.input_size, 1), "linear")
    model = models.create(name, num_classes=2, in_channels=1, rngs=nnx.Rngs(0),
                          precision=precision)
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
    return {"model": name, "precision": precision, "group": get_group(group).name,
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
    p.add_argument("--models", nargs="+", default=list(models.available()),
                   choices=list(models.available()))
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    images = real_images(args.data_dir, args.images)
    backend = jax.default_backend()
    print(f"JAX {jax.__version__} on {backend} ({jax.devices()[0].device_kind}); "
          f"{len(images)} BreastMNIST test images", flush=True)
    rows = []
    for name in args.models:
        for precision in args.precisions:
            rows.append({**measure(name, precision, images, args.repeats), "backend": backend,
                         "device": jax.devices()[0].device_kind, "jax": jax.__version__})
            r = rows[-1]
            if args.output:  # after every row: a run stopped at a time limit keeps its rows
                pathlib.Path(args.output).write_text(json.dumps(rows, indent=2))
            print(f"{name:20s} {precision:8s} invariance error {r['invariance_error']:.2e} "
                  f"({'control' if r['exact'] is None else 'ok' if r['exact'] else 'NOT EXACT'})"
                  f"  fwd+bwd {r['fwd_bwd_ms']:8.2f} ms", flush=True)
    print()
    print(f"| model | {' | '.join(f'{q} error | {q} ms' for q in args.precisions)} |")
    print(f"|---|{'---|---|' * len(args.precisions)}")
    for name in args.models:
        cells = []
        for q in args.precisions:
            r = next(r for r in rows if r["model"] == name and r["precision"] == q)
            cells += [f"{r['invariance_error']:.1e}", f"{r['fwd_bwd_ms']:.2f}"]
        print(f"| {name} | {' | '.join(cells)} |")
    claimed = [r for r in rows if r["exact"] is not None and r["precision"] == "highest"]
    print(f"\nat the default precision (highest): {sum(r['exact'] for r in claimed)} of "
          f"{len(claimed)} group models within {RTOL:g}")
    return rows


if __name__ == "__main__":
    cli.run(main, "experiments.exactness")
