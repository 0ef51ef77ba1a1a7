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
