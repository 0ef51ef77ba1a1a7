"""The shape of the experiments code: small modules, short functions (issue: one engine)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULE_LINES = 400
FUNCTION_LINES = 80


def _modules():
    return sorted((ROOT / "experiments").rglob("*.py"))


def test_no_experiments_module_over_400_lines():
    big = {str(p.relative_to(ROOT)): n for p in _modules()
           if (n := len(p.read_text().splitlines())) > MODULE_LINES}
    assert not big, f"modules over {MODULE_LINES} lines: {big}"


def test_no_experiments_function_over_80_lines():
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    assert not long, f"functions over {FUNCTION_LINES} lines: {long}"


def test_the_checks_can_fail(tmp_path):
    """The measure counts a long function (negative control)."""
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES + 1))
    tree = ast.parse(f"def f():\n{body}\n")
    node = tree.body[0]
    assert node.end_lineno - node.lineno + 1 > FUNCTION_LINES
