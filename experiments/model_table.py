"""Print the registered models with their parameter counts as a Markdown table.

    python -m experiments.model_table [--in-channels 1 --num-classes 2]
"""

from __future__ import annotations

import argparse

from flax import nnx

from dgcnn_jax import models


def rows(in_channels: int = 1, num_classes: int = 2) -> list[dict]:
    out = []
    for name in models.available():
        spec = models.spec(name)
        model = models.create(name, num_classes=num_classes, in_channels=in_channels,
                              rngs=nnx.Rngs(0))
        out.append({"name": name, "group": spec.group, "dynamic": spec.dynamic,
                    "params": models.count_params(model), "description": spec.description})
    return out


def markdown(table: list[dict]) -> str:
    base = next(r["params"] for r in table if r["name"] == "cnn")
    lines = ["| model | group | dynamic | parameters | vs cnn | description |",
             "|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| `{r['name']}` | {r['group']} | {'yes' if r['dynamic'] else 'no'} | "
                     f"{r['params']:,} | {100 * (r['params'] / base - 1):+.1f}% | "
                     f"{r['description']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=2)
    args = p.parse_args(argv)
    print(markdown(rows(args.in_channels, args.num_classes)))


if __name__ == "__main__":
    main()
