"""Print every registered model with parameters and forward FLOPs per image (Markdown).

    python -m experiments.model_table

28 px models are counted for 1-channel MedMNIST images, 96 px DenseNets for 3-channel
PCam patches; percentages are relative to the plain model of the same family. FLOPs
are counted analytically (convolutions and matrix products, 2 per multiply-add).
"""

from __future__ import annotations


from flax import nnx

from dgcnn_jax import models
from experiments import cli


def rows(num_classes: int = 2) -> list[dict]:
    out = []
    for name in models.available():
        spec = models.spec(name)
        model = models.create(name, num_classes=num_classes, in_channels=spec.in_channels,
                              rngs=nnx.Rngs(0))
        shape = (spec.input_size, spec.input_size, spec.in_channels)
        out.append({"name": name, "group": spec.group, "dynamic": spec.dynamic,
                    "input": f"{spec.input_size}x{spec.input_size}x{spec.in_channels}",
                    "baseline": spec.baseline, "params": models.count_params(model),
                    "flops": models.forward_flops(model, shape),
                    "description": spec.description})
    return out


def markdown(table: list[dict]) -> str:
    by_name = {r["name"]: r for r in table}
    lines = ["| model | input | group | dynamic | parameters | vs plain | MFLOPs / image | "
             "vs plain | description |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        base = by_name[r["baseline"]]
        lines.append(
            f"| `{r['name']}` | {r['input']} | {r['group']} | {'yes' if r['dynamic'] else 'no'}"
            f" | {r['params']:,} | {100 * (r['params'] / base['params'] - 1):+.1f}% | "
            f"{r['flops'] / 1e6:,.1f} | {r['flops'] / base['flops']:.2f}x | "
            f"{r['description']} |")
    return "\n".join(lines)


def main(argv=None):
    p = cli.Parser(__doc__)
    p.add_argument("--num-classes", type=int, default=2)
    args = p.parse_args(argv)
    print(markdown(rows(args.num_classes)))


if __name__ == "__main__":
    cli.run(main, "experiments.model_table")
