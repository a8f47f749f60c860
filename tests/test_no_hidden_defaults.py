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


# The run's lifecycle and the device code (formatting widths, console digits) hold no
# hyperparameters; they sat in src/utils before src/training/run and src/training/device.
NOT_HYPERPARAMETERS = ("training/run", "training/device")


def hyperparameter_modules(package: str) -> list[Path]:
    return [
        p
        for p in sorted((SRC / package).rglob("*.py"))
        if not str(p.relative_to(SRC)).startswith(NOT_HYPERPARAMETERS)
    ]


@pytest.mark.parametrize("package", ["models", "training"])
def test_no_numeric_defaults(package):
    offenders = [hit for p in hyperparameter_modules(package) for hit in numeric_defaults(p)]
    assert offenders == []


def test_the_step_and_the_loop_are_checked():
    names = {p.name for p in hyperparameter_modules("training")}
    assert {"step.py", "loop.py", "setup.py", "keys.py"} <= names
    assert "console.py" not in names and "parallel.py" not in names


def test_the_check_can_fail(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x, hidden=500, *, lr=-1e-3):\n    return x\n")
    assert len(numeric_defaults(bad)) == 2
