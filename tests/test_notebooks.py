"""The notebook policy: notebooks analyse saved runs and never train; outputs are not committed;
notebooks/analysis.ipynb runs headless against a tiny run made here."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from src.evaluation.evaluate import evaluate_run
from tests.helpers import BASELINE, REPO, TINY, run_script

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
STRIP_HOOK = REPO / "scripts" / "hooks" / "strip_notebook_outputs.py"
# A call of a training function (train_and_evaluate, train_step, make_train_step, run_training,
# ...; not abstract_train_state, which only builds shapes) or a command line that starts
# scripts/train.py or scripts/sweep.py.
TRAIN_CALL = re.compile(r"^(train|make_train|run_train|fit$)", re.IGNORECASE)
TRAIN_SCRIPT = re.compile(r"scripts/(train|sweep)\.py")


def code_of(cell_source: str) -> str:
    """Cell source without IPython magics and shell lines, which are not Python."""
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in cell_source.splitlines()
    )


def policy_violations(source: str) -> list[str]:
    """What in one code cell breaks the policy: importing src.training or calling a train
    function (including running the training or sweep script)."""
    problems = []
    if TRAIN_SCRIPT.search(source):
        problems.append("runs scripts/train.py or scripts/sweep.py")
    for node in ast.walk(ast.parse(code_of(source))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            names = []
        problems += [
            f"imports {n}" for n in names if n == "src.training" or n.startswith("src.training.")
        ]
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if TRAIN_CALL.search(name):
                problems.append(f"calls {name}()")
    return problems


def code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_there_is_an_analysis_notebook():
    assert REPO / "notebooks" / "analysis.ipynb" in NOTEBOOKS


@pytest.mark.parametrize(
    "source, bad",
    [
        ("from src.training.loop import train_and_evaluate", True),
        ("import src.training.step as s", True),
        ("from src import training", True),
        ("x = make_train_step(graphdef, tx)", True),
        ("%time\nloop.train_and_evaluate(cfg, paths, False)", True),
        ("!python scripts/train.py --config=configs/experiment/baseline.yaml", True),
        (
            "from src.evaluation.evaluate import restore_state\nrestore_state(d, 'best', a, s)",
            False,
        ),
        ("records = [r for r in history if r['split'] == 'train']", False),
        ("graphdef, abstract = abstract_train_state(cfg, shape, steps)", False),
        ("state = run_training(cfg)", True),
    ],
)
def test_policy_check_catches_training(source: str, bad: bool):
    assert bool(policy_violations(source)) == bad


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_does_not_train(path: Path):
    problems = [p for cell in code_cells(path) for p in policy_violations("".join(cell["source"]))]
    assert not problems, f"{path.name}: {problems}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_outputs_are_stripped(path: Path):
    for cell in code_cells(path):
        assert cell["outputs"] == [] and cell["execution_count"] is None, path.name
    # The hook leaves a clean notebook byte for byte as it is.
    result = subprocess.run([sys.executable, str(STRIP_HOOK), str(path)], capture_output=True)
    assert result.returncode == 0, result.stdout


def test_strip_hook_clears_outputs(tmp_path: Path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    cell.execution_count = 3
    cell.metadata["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00"}
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), cell]
    path = tmp_path / "dirty.ipynb"
    nbformat.write(nb, path)

    first = subprocess.run([sys.executable, str(STRIP_HOOK), str(path)], capture_output=True)
    second = subprocess.run([sys.executable, str(STRIP_HOOK), str(path)], capture_output=True)
    assert (first.returncode, second.returncode) == (1, 0)
    clean = nbformat.read(path, as_version=4)
    nbformat.validate(clean)
    assert clean.cells[1].source == "print(1)" and clean.cells[0].source == "# title"
    assert clean.cells[1].outputs == [] and clean.cells[1].execution_count is None
    assert "execution" not in clean.cells[1].metadata


def test_analysis_notebook_runs_headless_on_a_tiny_run(tmp_path: Path, monkeypatch):
    result = run_script(
        "train.py",
        f"--config={BASELINE}",
        f"--workdir={tmp_path}",
        "--run_id=nb",
        *[f"--config.{o}" for o in TINY],
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "checkpoints" / "nb"
    small = ["eval.iwae_samples=8", "eval.iwae_chunk=8", "eval.mi_samples=2", "eval.figures=false"]
    evaluate_run(run_dir, "best", "test", small)

    monkeypatch.setenv("LATENT_VAE_RUN_DIR", str(run_dir))
    nb = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"run: {run_dir.resolve()}" in text and "status=completed" in text
    assert "best_test" in text  # the eval record's row
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # curves, KL per dimension, reconstructions
