"""Static GroupConv vs DynamicGroupConv (K kernels, invariant attention), fwd + bwd.

    python -m experiments.benchmark_dynamic [--batch 64 --size 32 --fields 16 ...]

For each group, precision (``--precisions``; :data:`dgcnn_jax.execution.PRECISIONS`) and
dynamic ``impl`` (:data:`dgcnn_jax.execution.IMPLS`), and each third-form layer of
:data:`FORMS` (``--forms``, at the last precision), prints the median time of one
forward + backward pass (``jax.vjp`` with a fixed cotangent: the output and the gradients with
respect to the parameters and the input) over repeated runs in this process, and the
ratio dynamic / static (the static layer at the same precision); writes the numbers as
JSON.
"""

from __future__ import annotations

import json
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import dgcnn_jax as dg
from experiments.timing import time_call
from experiments import cli, report


DYNAMIC_IMPLS = tuple(name for name, impl in dg.execution.IMPLS.items()
                      if name != "auto" and "dynamic" in impl.kinds)

_ODCONV = ("positions", "in_fields", "out_fields")
FORMS = {
    "odconv": {"targets": ("banks", *_ODCONV)},
    "odconv_k1": {"targets": _ODCONV, "num_kernels": 1},
    "assign": {"targets": ("field_banks", *_ODCONV), "bank_mix": "signed",
               "bank_start": "assignment"},
}
"""The third dynamic form (:data:`dgcnn_jax.dynamic.TARGETS`), as the registered models and
sweep runs use it: ``p4m_odgcnn`` (K banks, attention over banks, kernel positions and
input and output fields), ``p4m_odgcnn_k1`` (one kernel, positions and fields) and
``p4m_odgcnn_assign`` (banks mixed per output field, signed, from a fixed assignment)."""


def _default() -> str:
    """The implementation ``"auto"`` runs for a dynamic layer on this backend."""
    return dg.execution.resolve("auto", "dynamic")


def fwd_bwd(module, x, tau=None):
    """A jitted forward + backward pass: ``jax.vjp`` of the layer with a fixed random
    cotangent, returning the output and the gradients for parameters and input."""
    graphdef, state = nnx.split(module)

    def forward(state, x):
        m = nnx.merge(graphdef, state)
        return m(x) if tau is None else m(x, tau=tau)

    shape = jax.eval_shape(forward, state, x).shape
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)

    def step(state, x, cotangent):
        y, vjp = jax.vjp(forward, state, x)
        return y, vjp(cotangent)

    step = jax.jit(step)
    return lambda: step(state, x, cotangent)


def run(batch: int, size: int, fields: int, kernels: int, repeats: int, groups, impls,
        kernel_size: int = 3, precisions=("highest",), forms=()) -> dict:
    results = {"device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
               "machine": platform.processor() or platform.machine(),
               "cpu": report.machine()["cpu"], "jax": jax.__version__, "batch": batch,
               "size": size, "fields": fields, "num_kernels": kernels,
               "kernel_size": kernel_size, "repeats": repeats, "rows": []}
    for name in groups:
        group = dg.get_group(name)
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((batch, size, size, fields, group.order)),
                        jnp.float32)
        for precision in precisions:
            static = dg.GroupConv(fields, fields, kernel_size, group, precision=precision,
                                  rngs=nnx.Rngs(0))
            base = time_call(fwd_bwd(static, x), repeats=repeats)
            results["rows"].append({"group": name, "precision": precision,
                                    "layer": "GroupConv", "impl": "-", **base, "ratio": 1.0})
            print(f"{name:4s} {precision:8s} {'GroupConv':17s} {'-':8s} median "
                  f"{base['median_s'] * 1e3:9.2f} ms  (compile {base['compile_s']:.1f} s)",
                  flush=True)
            for impl in impls:
                layer = dg.DynamicGroupConv(fields, fields, kernel_size, group,
                                            num_kernels=kernels, impl=impl,
                                            precision=precision, rngs=nnx.Rngs(1))
                t = time_call(fwd_bwd(layer, x, tau=jnp.float32(1.0)), repeats=repeats)
                ratio = t["median_s"] / base["median_s"]
                results["rows"].append({"group": name, "precision": precision,
                                        "layer": "DynamicGroupConv", "impl": impl, **t,
                                        "ratio": ratio})
                print(f"{name:4s} {precision:8s} {'DynamicGroupConv':17s} {impl:8s} median "
                      f"{t['median_s'] * 1e3:9.2f} ms  ratio {ratio:5.2f}"
                      f"{'  (default)' if impl == _default() else ''}", flush=True)
        for form in forms:
            t = _timed_form(name, group, x, fields, kernels, kernel_size, form, repeats,
                            precisions[-1])
            ratio = t["median_s"] / base["median_s"]
            results["rows"].append({"group": name, "precision": precisions[-1],
                                    "layer": "DynamicGroupConv", "impl": form, **t,
                                    "ratio": ratio})
    return results


def _timed_form(name, group, x, fields, kernels, kernel_size, form, repeats,
                precision) -> dict:
    """One third-form layer timed against the static layer at ``precision``, printed."""
    kwargs = {"num_kernels": kernels, **FORMS[form]}
    layer = dg.DynamicGroupConv(fields, fields, kernel_size, group, precision=precision,
                                rngs=nnx.Rngs(1), **kwargs)
    t = time_call(fwd_bwd(layer, x, tau=jnp.float32(1.0)), repeats=repeats)
    print(f"{name:4s} {'':8s} {'DynamicGroupConv':17s} {form:8s} median "
          f"{t['median_s'] * 1e3:9.2f} ms", flush=True)
    return t


def markdown_table(results: dict) -> str:
    """The measured rows as a Markdown table, and where they were measured."""
    lines = ["| group | precision | layer | impl or form | median fwd+bwd (ms) | dynamic / static |",
             "|---|---|---|---|---|---|"]
    for row in results["rows"]:
        default = " (default)" if row["impl"] == _default() else ""
        lines.append(f"| {row['group']} | {row.get('precision', 'highest')} | {row['layer']} "
                     f"| {row['impl']}{default} | {row['median_s'] * 1e3:.2f} | "
                     f"{row['ratio']:.2f} |")
    lines += ["", f"Measured on {results.get('cpu') or results['machine']} "
                  f"({results['platform']}, JAX {results.get('jax', '?')}): batch "
                  f"{results['batch']}, {results['size']}x{results['size']}, "
                  f"{results['fields']} fields in and out, {results['kernel_size']}x"
                  f"{results['kernel_size']}, K = {results['num_kernels']}; median of "
                  f"{results['repeats']} runs after a warm-up"
                  + (f"; {results['note']}." if results.get("note") else ".")]
    return "\n".join(lines)


def markdown_headline(results: dict) -> str:
    """The p4m rows a reader compares (the static layer, the published dynamic layer as it
    runs by default, the third form) as a short table."""
    names = {"-": "static `GroupConv`", _default(): "published dynamic layer (K banks)",
             "odconv": "third form (`p4m_odgcnn`)", "odconv_k1": "third form, one kernel",
             "assign": "third form, assignment start"}
    rows = [r for r in results["rows"] if r["group"] == "p4m" and r["impl"] in names]
    lines = ["| p4m layer, fwd+bwd | median (ms) | / static |", "|---|---|---|"]
    lines += [f"| {names[r['impl']]} | {r['median_s'] * 1e3:.1f} | {r['ratio']:.2f} |"
              for r in rows]
    return "\n".join(lines)


def main(argv=None):
    p = cli.Parser(__doc__)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--fields", type=int, default=16)
    p.add_argument("--kernels", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--groups", nargs="+", default=["p4", "p4m"])
    p.add_argument("--impls", nargs="+", choices=DYNAMIC_IMPLS, default=list(DYNAMIC_IMPLS))
    p.add_argument("--precisions", nargs="+", choices=list(dg.execution.PRECISIONS),
                   default=["highest"],
                   help="precisions of every convolution (the static baseline too); on a GPU "
                        "measure highest and default")
    p.add_argument("--forms", nargs="*", choices=list(FORMS), default=list(FORMS),
                   help="third-form layers to time too (default precision, impl of their own)")
    p.add_argument("--note", default="", help="how the machine was shared while it ran, "
                   "kept with the numbers (e.g. 'pinned to one core beside a training run')")
    p.add_argument("--output", default="benchmark_dynamic.json")
    args = p.parse_args(argv)
    results = run(args.batch, args.size, args.fields, args.kernels, args.repeats, args.groups,
                  args.impls, precisions=args.precisions, forms=args.forms)
    results["note"] = args.note
    out = pathlib.Path(args.output)
    out.write_text(json.dumps(results, indent=2))
    print(markdown_table(results))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    cli.run(main, "experiments.benchmark_dynamic")
