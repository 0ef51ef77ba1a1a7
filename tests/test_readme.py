"""The README's usage example runs as written."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_usage_example_runs():
    text = README.read_text()
    section = text.split("## Usage", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    shape, error = out.getvalue().split(") ")
    assert shape == "(2, 8"
    assert float(error) <= 1e-5


PUBLIC_MODULES = ("dgcnn_jax", "dgcnn_jax.groups", "dgcnn_jax.filters", "dgcnn_jax.ops",
                  "dgcnn_jax.norm", "dgcnn_jax.dynamic", "dgcnn_jax.execution", "dgcnn_jax.nn",
                  "dgcnn_jax.testing", "dgcnn_jax.models", "dgcnn_jax.data",
                  "dgcnn_jax.data.medmnist", "dgcnn_jax.data.pbc", "dgcnn_jax.data.tfds_sources",
                  "dgcnn_jax.metrics")


def _api_table() -> dict[str, set[str]]:
    """``module -> names`` of README's "What is in the package" table."""
    section = README.read_text().split("## What is in the package", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`dgcnn_jax"):
            table[cells[0].strip("`")] = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[1]))
    return table


def test_api_table_lists_exactly_every_public_name():
    import importlib
    import pkgutil

    import dgcnn_jax

    found = {"dgcnn_jax"} | {m.name for m in pkgutil.walk_packages(dgcnn_jax.__path__,
                                                                    "dgcnn_jax.")
                             if not any(p.startswith("_") for p in m.name.split("."))}
    assert found == set(PUBLIC_MODULES), "a public module was added or made private"
    table = _api_table()
    assert set(table) == set(PUBLIC_MODULES)
    for name in PUBLIC_MODULES:
        exported = set(importlib.import_module(name).__all__)
        missing, stale = exported - table[name], table[name] - exported
        assert not missing and not stale, (name, "undocumented:", missing, "not exported:", stale)
