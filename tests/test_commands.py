"""One convention for the commands: scripts/NAME.py is a thin wrapper that runs
`NAME_main(argv) -> int` from its package's cli.py (src/<package>/cli.py) through
src.utils.cli.run, which turns a user error into one line and status 2."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.helpers import REPO

# Analysis scripts of particular experiments (EXPERIMENTS.md), not commands of the project.
EXPERIMENT_SCRIPTS = {"plot_experiments"}
COMMANDS = sorted(p for p in (REPO / "scripts").glob("*.py") if p.stem not in EXPERIMENT_SCRIPTS)


def main_imports(script: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from src.<...>.cli import <name>_main` in script."""
    found = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("src."):
            found += [(node.module or "", a.name) for a in node.names if a.name.endswith("_main")]
    return found


@pytest.mark.parametrize("script", COMMANDS, ids=lambda p: p.name)
def test_a_script_runs_its_main_from_its_packages_cli(script: Path):
    tree = ast.parse(script.read_text())
    defined = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert defined == [], f"{script.name} defines {defined}: move them to src/<package>/cli.py"
    (module, name), *more = main_imports(script)
    assert not more and name == f"{script.stem}_main", (script.name, name)
    assert module.startswith("src.") and module.endswith(".cli"), module
    assert callable(getattr(importlib.import_module(module), name))
    assert f"run({name})" in script.read_text() or f"partial({name}" in script.read_text()


def test_every_main_of_a_cli_module_has_its_script():
    mains = set()
    for cli in (REPO / "src").glob("*/cli.py"):
        tree = ast.parse(cli.read_text())
        mains |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    mains = {m for m in mains if m.endswith("_main") and not m.startswith("_")}
    assert mains == {f"{p.stem}_main" for p in COMMANDS}


def test_the_check_sees_a_main_import(tmp_path: Path):
    script = tmp_path / "x.py"
    script.write_text("from src.data.cli import x_main\nfrom src.utils.cli import run\n")
    assert main_imports(script) == [("src.data.cli", "x_main")]
