"""The README and the docs pages: the usage example runs, the API table is exact, the
generated tables are current, the links resolve, and the README stays short."""

import contextlib
import importlib
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
API = ROOT / "docs" / "api.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))


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


def test_readme_is_short_and_links_every_page():
    text = README.read_text()
    assert len(text.encode()) <= 12 * 1024, "README.md is over 12 KB: move detail to docs/"
    for page in PAGES:
        assert f"(docs/{page.name})" in text, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.name)
def test_links_resolve(path):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def test_generated_tables_are_current():
    """Every table made from a results file is the report command's output for the file
    as committed (``python -m experiments.report --update README.md docs/*.md``)."""
    from experiments import report

    blocks = 0
    for path in [README, *PAGES]:
        blocks += len(report.BLOCK.findall(path.read_text()))
        assert not report.update_blocks(path, ROOT, write=False), (
            f"{path.name}: a generated table is stale; run python -m experiments.report "
            f"--update README.md docs/*.md")
    assert blocks >= 2


def test_a_stale_generated_table_is_found(tmp_path):
    """Negative control: an edited number in a generated block is reported."""
    from experiments import report

    page = tmp_path / "page.md"
    text = README.read_text()
    page.write_text(text.replace("| static `GroupConv` | ", "| static `GroupConv` | 9", 1))
    assert page.read_text() != text
    assert report.update_blocks(page, ROOT, write=False)


PUBLIC_MODULES = ("dgcnn_jax", "dgcnn_jax.groups", "dgcnn_jax.filters", "dgcnn_jax.ops",
                  "dgcnn_jax.norm", "dgcnn_jax.dynamic", "dgcnn_jax.execution", "dgcnn_jax.nn",
                  "dgcnn_jax.testing", "dgcnn_jax.models", "dgcnn_jax.data",
                  "dgcnn_jax.data.medmnist", "dgcnn_jax.data.pbc", "dgcnn_jax.data.idc",
                  "dgcnn_jax.data.folder", "dgcnn_jax.data.tfds_sources",
                  "dgcnn_jax.metrics")
EXPERIMENT_PACKAGES = ("experiments.training", "experiments.sweep")


def _api_table() -> dict[str, set[str]]:
    """``module -> names`` of the tables of docs/api.md."""
    table = {}
    for line in API.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith(("`dgcnn_jax", "`experiments")):
            table[cells[0].strip("`")] = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[1]))
    return table


def test_api_table_lists_exactly_every_public_name():
    import pkgutil

    import dgcnn_jax

    found = {"dgcnn_jax"} | {m.name for m in pkgutil.walk_packages(dgcnn_jax.__path__,
                                                                    "dgcnn_jax.")
                             if not any(p.startswith("_") for p in m.name.split("."))}
    assert found == set(PUBLIC_MODULES), "a public module was added or made private"
    table = _api_table()
    assert set(table) == set(PUBLIC_MODULES) | set(EXPERIMENT_PACKAGES)
    for name in table:
        exported = set(importlib.import_module(name).__all__)
        missing, stale = exported - table[name], table[name] - exported
        assert not missing and not stale, (name, "undocumented:", missing, "not exported:", stale)
