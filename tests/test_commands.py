"""One convention for the commands: scripts/NAME.py is a thin wrapper that runs
`NAME_main(argv) -> int` from its package's cli.py (src/<package>/cli.py) through
src.utils.cli.run, which turns a user error into one line and status 2."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from src.utils.cli import ArgumentParser
from src.utils.errors import UserError
from tests.helpers import REPO, run_script

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


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["--run-id=x"], "unrecognized arguments: --run-id=x; did you mean --run_id?"),
        (["--rn_id", "x"], "; did you mean --run_id?"),
        (["--run-id=x", "--dry-run"], "; did you mean --run_id or --dry_run?"),
    ],
)
def test_a_misspelt_flag_gets_a_suggestion(argv: list[str], hint: str):
    parser = ArgumentParser(prog="p")
    parser.add_argument("--run_id")
    parser.add_argument("--dry_run", action="store_true")
    with pytest.raises(UserError) as err:
        parser.parse_args(argv)
    assert hint in str(err.value) and "\n" not in str(err.value)


def test_a_flag_far_from_any_gets_no_suggestion():
    parser = ArgumentParser(prog="p")
    parser.add_argument("--run_id")
    with pytest.raises(UserError) as err:
        parser.parse_args(["--zzz"])
    assert str(err.value) == "p: unrecognized arguments: --zzz"


def test_train_suggests_the_flag(tmp_path: Path):
    result = run_script("train.py", "--run-id=x", f"--workdir={tmp_path}", timeout=60)
    assert result.returncode == 2
    assert "did you mean --run_id?" in result.stderr and "Traceback" not in result.stderr
