"""Layer and model benchmarks: time, images/s, FLOP/s against this machine's matmul rate.

    python -m experiments.benchmark [--quick] [--output benchmark.json]

Layers (lifting, group, dynamic group with K = 4 and invariant attention; p4 and p4m;
the group layer also through the reference ``impl="xla"`` path): one forward +
backward pass (``jax.vjp`` with a fixed random cotangent: the output and the gradients
for parameters and input) at batch 64, 96x96, 16 fields in
and out, 3x3 (``--quick``: batch 16, 32x32). Models: one training step of every
registered model at its input size. Main job: whole training epochs of the default
config (p4m_dgcnn on BreastMNIST) with the host and the device input pipelines, and 4 seeds
trained together. Each row gives the median time after a warm-up
(repeated runs in this process), images/s, FLOPs counted analytically (forward FLOPs
x 3 for forward + backward), achieved FLOP/s and its ratio to a float32 matmul rate
measured in the same process, compile time and the process's peak memory so far.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

import dgcnn_jax as dg
from dgcnn_jax import models
from experiments.configs import get_config, override
from experiments.timing import time_call
from experiments import cli


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul FLOP/s (``n x n`` times ``n x n``)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    t = time_call(jax.jit(lambda a: a @ a), a, repeats=repeats)["median_s"]
    return 2 * n ** 3 / t


def peak_memory_mb() -> float:
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # host RSS (KiB)


def _row(kind, name, timing, images, flops, peak, **extra):
    rate = flops / timing["median_s"]
    return {"kind": kind, "name": name, "median_s": timing["median_s"],
            "compile_s": timing["compile_s"], "images_per_s": images / timing["median_s"],
            "flops": flops, "flops_per_s": rate, "matmul_ratio": rate / peak,
            "peak_memory_mb": peak_memory_mb(), **extra}


def layer_rows(batch, size, fields, repeats, peak):
    rows = []
    for gname in ("p4", "p4m"):
        group = dg.get_group(gname)
        rng = np.random.default_rng(0)
        image = jnp.asarray(rng.standard_normal((batch, size, size, fields)), jnp.float32)
        fmap = jnp.asarray(rng.standard_normal((batch, size, size, fields, group.order)),
                           jnp.float32)
        conv_flops = 2 * batch * size * size * 9 * fields * group.order * fields * group.order
        layers = [
            ("lifting", dg.LiftingConv(fields, fields, 3, group, rngs=nnx.Rngs(0)), image,
             conv_flops // group.order),
            ("group", dg.GroupConv(fields, fields, 3, group, rngs=nnx.Rngs(0)), fmap,
             conv_flops),
            ("group (xla reference)", dg.GroupConv(fields, fields, 3, group, impl="xla",
                                                   rngs=nnx.Rngs(0)), fmap, conv_flops),
            ("dynamic group", dg.DynamicGroupConv(fields, fields, 3, group, num_kernels=4,
                                                  rngs=nnx.Rngs(0)), fmap, conv_flops),
        ]
        base = None
        for kind, layer, x, flops in layers:
            graph, state = nnx.split(layer)

            def forward(state, x, graph=graph):
                return nnx.merge(graph, state)(x)

            cotangent = jnp.asarray(rng.standard_normal(
                jax.eval_shape(forward, state, x).shape), jnp.float32)

            def fwd_bwd(state, x, cotangent, forward=forward):
                y, vjp = jax.vjp(forward, state, x)
                return y, vjp(cotangent)  # output and gradients (parameters, input)

            step = jax.jit(fwd_bwd)
            timing = time_call(step, state, x, cotangent, repeats=repeats)
            row = _row("layer", f"{gname} {kind}", timing, batch, 3 * flops, peak)
            if kind == "group":
                base = timing["median_s"]
            if kind.startswith("dynamic") or "reference" in kind:
                row["ratio_to_group"] = timing["median_s"] / base
            rows.append(row)
            print(_format(row), flush=True)
    return rows


def model_rows(batch, repeats, peak, names, sizes=(None,), channels=None):
    """One training step of each model in ``names`` at each of ``sizes`` (None: the
    model's own input size) with ``channels`` image channels (None: the family's)."""
    rows = []
    for size in sizes:
        for name in names:
            rows.append(_model_row(batch, repeats, peak, name, size, channels))
            print(_format(rows[-1]), flush=True)
    return rows


def _model_row(batch, repeats, peak, name, size, channels):
    from experiments import training  # needs the data stack (grain); layers do not

    spec = models.spec(name)
    size, channels = size or spec.input_size, channels or spec.in_channels
    config = override(get_config(), [f"model={name}", f"batch_size={batch}",
                                     "progress=false"])
    mesh = training.make_mesh(config)
    state = training.create_train_state(config, 2, channels, 10, mesh)
    shape = (batch, size, size, channels)
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    batch_data = jax.device_put(
        {"image": jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32),
         "label": jnp.zeros((batch,), jnp.int32)}, sharding)
    tau = training.temperature(config, 0.0)
    flops = 3 * batch * models.forward_flops(state.model(), shape[1:])
    holder = [state]

    def step():
        holder[0], out = training.train_step(holder[0], batch_data, tau)
        return out["loss"]

    start = time.perf_counter()
    jax.block_until_ready(step())
    compile_s = time.perf_counter() - start
    timing = time_call(step, repeats=repeats, warmup=1)
    timing["compile_s"] = compile_s
    label = name if size == spec.input_size else f"{name} {size}x{size}x{channels}"
    return _row("train step", label, timing, batch, flops, peak)


def job_rows(epochs, peak, data_dir=None, pipelines=("host", "device"), seeds=4,
             sets=()):
    """The main job (the default config: p4m_dgcnn on BreastMNIST) per input pipeline:
    whole training epochs, timed one by one. ``compile_s`` is the first epoch's time
    (tracing, compilation and the epoch), ``median_s`` the median of the ``epochs``
    epochs after it; the device row gives its ratio to the host row. ``seeds > 1`` adds a
    row for that many seeds trained together (a stacked :class:`~experiments.training.Trainer`),
    whose ratio is per seed: its epoch time divided by ``seeds``, over the host row's.
    ``sets``: config overrides (``key=value``) for another job."""
    from experiments import datasets, training

    rows, base = [], None
    for pipeline in [*pipelines, *(["seeds"] if seeds > 1 else [])]:
        on = "device" if pipeline == "seeds" else pipeline
        config = override(get_config(), [*sets, f"pipeline={on}", "progress=false"])
        dataset = datasets.open_dataset(config.dataset, data_dir,
                                        train_fraction=config.train_fraction,
                                        data_seed=config.data_seed,
                                        input_size=config.input_size)
        steps = dataset.num_train // config.batch_size
        mesh = training.make_mesh(config)
        together = seeds if pipeline == "seeds" else 1
        members = [training.Member(dataclasses.replace(config, seed=s),
                                   training.Workdir(pathlib.Path(".")), None,
                                   training.Progress()) for s in range(together)]
        states = [training.create_train_state(m.config, dataset.num_classes, dataset.channels,
                                              steps, mesh) for m in members]
        trainer = training.Trainer(config, training.Workdir(pathlib.Path(".")), dataset, steps,
                                   mesh, None, on,
                                   list(range(seeds)) if pipeline == "seeds" else None,
                                   members)
        state = training.stack_states(states) if pipeline == "seeds" else states[0]
        times = []
        for epoch in range(epochs + 1):
            for member in members:  # a whole epoch each time, as the training loop does
                member.progress.batch = 0
            start = time.perf_counter()
            state = trainer.train_epoch(state, epoch)
            jax.block_until_ready(state.params)
            times.append(time.perf_counter() - start)
        timing = {"median_s": float(np.median(times[1:])), "compile_s": times[0],
                  "times_s": times[1:]}
        size = (28, 28, dataset.channels)
        images_per_epoch = together * steps * config.batch_size
        flops = 3 * images_per_epoch * models.forward_flops(states[0].model(), size)
        label = f"{seeds} seeds together" if pipeline == "seeds" else pipeline
        row = _row("main job", f"{config.model} {config.dataset} epoch ({label})", timing,
                   images_per_epoch, flops, peak)
        if pipeline == "host":
            base = timing["median_s"]
        elif base is not None:
            row["ratio_to_host"] = timing["median_s"] / together / base
        rows.append(row)
        print(_format(row), flush=True)
    return rows


def _format(row):
    extra = f"  x{row['ratio_to_group']:.2f} of group" if "ratio_to_group" in row else ""
    if "ratio_to_host" in row:
        extra = f"  x{row['ratio_to_host']:.2f} of host"
    return (f"{row['kind']:10s} {row['name']:28s} {row['median_s'] * 1e3:10.1f} ms "
            f"{row['images_per_s']:9.1f} img/s {row['flops_per_s'] / 1e9:7.1f} GFLOP/s "
            f"({100 * row['matmul_ratio']:5.1f}% of matmul)  compile {row['compile_s']:5.1f} s"
            f"{extra}")


def markdown(results) -> str:
    lines = [f"matmul rate: {results['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s "
             f"({results['device']})", "",
             "| kind | name | median (ms) | images/s | GFLOP/s | % of matmul | compile (s) | "
             "vs baseline |", "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        ratio = (f"{r['ratio_to_group']:.2f} of group" if "ratio_to_group" in r else
                 f"{r['ratio_to_host']:.2f} of host" if "ratio_to_host" in r else "")
        lines.append(f"| {r['kind']} | {r['name']} | {r['median_s'] * 1e3:.1f} | "
                     f"{r['images_per_s']:.1f} | {r['flops_per_s'] / 1e9:.1f} | "
                     f"{100 * r['matmul_ratio']:.1f} | {r['compile_s']:.1f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    p = cli.Parser(__doc__)
    p.add_argument("--quick", action="store_true", help="small shapes, runs in under a minute")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    p.add_argument("--skip-models", action="store_true")
    p.add_argument("--sizes", type=int, nargs="*", default=None,
                   help="image sizes of the model rows (default: each model's own)")
    p.add_argument("--channels", type=int, default=None,
                   help="image channels of the model rows (default: the family's)")
    p.add_argument("--skip-layers", action="store_true")
    p.add_argument("--job-epochs", type=int, default=None,
                   help="epochs of the main job timed per pipeline after the first "
                        "(default 3, --quick 1; 0 skips the rows)")
    p.add_argument("--data-dir", default=None,
                   help="folder with breastmnist.npz for the main-job rows (default: "
                        "$DGCNN_DATA_DIR or the download cache)")
    p.add_argument("--matmul-size", type=int, default=2048,
                   help="n of the n x n matmul that measures the reference rate (an "
                        "accelerator needs a larger one, e.g. 8192, to reach its rate)")
    p.add_argument("--output", default="benchmark.json")
    args = p.parse_args(argv)
    batch, size, fields = (16, 32, 16) if args.quick else (64, 96, 16)
    repeats = args.repeats or (2 if args.quick else 3)
    peak = matmul_rate(args.matmul_size)
    print(f"matmul rate {peak / 1e9:.1f} GFLOP/s on {jax.devices()[0].device_kind}", flush=True)
    results = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
               "machine": platform.machine(), "quick": args.quick, "batch": batch,
               "size": size, "fields": fields, "repeats": repeats,
               "matmul_flops_per_s": peak,
               "rows": [] if args.skip_layers else layer_rows(batch, size, fields, repeats,
                                                              peak)}
    if not args.skip_models:
        names = args.models if args.models is not None else (
            [n for n in models.available() if models.spec(n).input_size == 28]
            if args.quick else list(models.available()))
        results["rows"] += model_rows(8 if args.quick else 32, repeats, peak, names,
                                      args.sizes or (None,), args.channels)
        epochs = args.job_epochs if args.job_epochs is not None else (1 if args.quick else 3)
        if epochs:
            results["rows"] += job_rows(epochs, peak, args.data_dir)
    pathlib.Path(args.output).write_text(json.dumps(results, indent=2))
    print(markdown(results))
    print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    cli.run(main, "experiments.benchmark")
