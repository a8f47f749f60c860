"""Hyperparameters live in YAML: no function in src/models or src/training has a numeric default."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def numeric_defaults(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            for default in [*args.defaults, *args.kw_defaults]:
                if default is None:
                    continue
                value = default.operand if isinstance(default, ast.UnaryOp) else default
                if isinstance(value, ast.Constant) and type(value.value) in (int, float):
                    name = getattr(node, "name", "<lambda>")
                    found.append(f"{path.name}:{default.lineno} {name} = {value.value!r}")
    return found


@pytest.mark.parametrize("package", ["models", "training"])
def test_no_numeric_defaults(package):
    offenders = [hit for p in sorted((SRC / package).rglob("*.py")) for hit in numeric_defaults(p)]
    assert offenders == []


def test_the_check_can_fail(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x, hidden=500, *, lr=-1e-3):\n    return x\n")
    assert len(numeric_defaults(bad)) == 2
