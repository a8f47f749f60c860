"""The notebook policy: notebooks analyse saved runs and never train; outputs are not committed;
the README's command (scripts/analyze.py) runs notebooks/analysis.ipynb headless against a tiny
run made here and writes its figures."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from src.evaluation.evaluate import evaluate_run
from src.evaluation.notebook import RUN_DIR_ENV, kl_bars, pick_run, stale_evals
from src.utils.errors import RunDirError
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


def test_readme_notebook_command_writes_the_figures(tmp_path: Path, monkeypatch):
    """`python scripts/analyze.py` as the README writes it: no run given, it picks the newest run
    of the workdir, executes the notebook and writes analysis.html and analysis.ipynb with the
    three figures under <workdir>/figures/<run_id>/; a stale eval record is warned about."""
    readme = (REPO / "README.md").read_text()
    assert "python scripts/analyze.py" in readme
    assert "figures/<run_id>/analysis.html" in readme

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
    record, _ = evaluate_run(run_dir, "best", "test", small)
    # An older run, which must not be picked, and an eval record of a step model_best has left.
    older = tmp_path / "checkpoints" / "older"
    older.mkdir()
    (older / "metrics.json").write_text((run_dir / "metrics.json").read_text())
    os.utime(older / "metrics.json", (1_000_000_000, 1_000_000_000))
    stale = {**record, "step": record["step"] - 20}
    (run_dir / "eval" / "best_test.json").write_text(json.dumps(stale))

    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    result = run_script("analyze.py", f"--workdir={tmp_path}", timeout=300)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "figures" / "nb"
    html, executed = folder / "analysis.html", folder / "analysis.ipynb"
    assert result.stdout.strip() == f"nb: wrote {html} and {executed}"
    assert "Traceback" not in result.stderr and "\x1b[" not in result.stderr
    assert (
        f"warning: eval/best_test.json is of step {stale['step']} but model_best is now at step "
        f"{record['step']}" in result.stderr
    )

    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert [o for o in outputs if o.output_type == "error"] == []
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"run: {run_dir.resolve()}" in text and "status=completed" in text
    assert "best_test" in text  # the eval record's row
    images = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # curves, KL per dimension, reconstructions
    page = html.read_text()
    assert all(image[:200] in page for image in images)  # embedded in the HTML


def test_the_notebook_shows_a_hierarchical_run_per_group(tmp_path: Path):
    """A hierarchical run (EMA on): the KL view is per latent group with the groups' KL over
    training, and the reconstructions come from the EMA parameters, without an error."""
    result = run_script(
        "train.py",
        f"--config={BASELINE}",
        "--model=hierarchical",
        f"--workdir={tmp_path}",
        "--run_id=hier",
        "--config.training.epochs=2",
        "--config.training.ema.decay=0.9",
        "--config.logging.every_steps=10",
        "--config.logging.console=false",
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "checkpoints" / "hier"
    small = ["eval.iwae_samples=4", "eval.iwae_chunk=4", "eval.mi_samples=2", "eval.figures=false"]
    evaluate_run(run_dir, "best", "test", small)
    result = run_script("analyze.py", f"--run_dir={run_dir}", timeout=300)
    assert result.returncode == 0, result.stderr
    nb = nbformat.read(tmp_path / "figures" / "hier" / "analysis.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert [o for o in outputs if o.output_type == "error"] == []
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # curves, KL per group (and over training), reconstructions
    # The KL view is figures.kl_per_group: its two panels (per group; over training).
    shown = [o["data"].get("text/plain", "") for o in images]
    assert any("with 2 Axes" in text and "1200x420" in text for text in shown), shown


def test_notebook_command_without_a_run_says_what_to_pass(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    result = run_script("analyze.py", f"--workdir={tmp_path}", timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"no run under {tmp_path / 'checkpoints'}: pass --run_dir=" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_pick_run_takes_the_given_run_else_the_newest(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    root = tmp_path / "checkpoints"
    for age, name in ((3, "old"), (2, "newer"), (1, ".newer.replaced"), (0, "no_record")):
        (root / name).mkdir(parents=True)
        if name != "no_record":
            (root / name / "metrics.json").write_text("{}")
            os.utime(root / name / "metrics.json", (2_000_000_000 - age, 2_000_000_000 - age))
    assert pick_run(workdir=tmp_path) == (root / "newer").resolve()
    assert pick_run(root / "old", workdir=tmp_path) == (root / "old").resolve()
    monkeypatch.setenv(RUN_DIR_ENV, str(root / "old"))
    assert pick_run(workdir=tmp_path) == (root / "old").resolve()
    with pytest.raises(RunDirError, match="no_record: no metrics.json"):
        pick_run(root / "no_record")


def test_stale_eval_records_are_named(tmp_path: Path):
    for folder in ("model_best/40", "model_best/60", "model_last/88", "model_last/90.orbax-tmp"):
        (tmp_path / folder).mkdir(parents=True)
    evals = {
        "best_test": {"checkpoint": "best", "step": 60, "split": "test"},
        "best_val": {"checkpoint": "best", "step": 40, "split": "val"},
        "last_test": {"checkpoint": "last", "step": 88, "split": "test"},
    }
    warnings = stale_evals(tmp_path, evals)
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "warning: eval/best_val.json is of step 40 but model_best is now at step 60"
    )
    assert "--checkpoint=best --split=val" in warnings[0]


def test_kl_bars_are_in_dimension_order_labelled_by_index():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = {
        "kl_per_dim": [0.1, 2.0, 0.0, 0.7],
        "posterior_mean_var": [0.5, 0.9, 0.001, 0.2],
        "active_threshold": 0.01,
        "active_units": 3,
    }
    fig, ax = plt.subplots()
    kl_bars(ax, record)
    from matplotlib.patches import Rectangle

    bars = [b for b in ax.patches if isinstance(b, Rectangle)]
    assert [b.get_height() for b in bars] == record["kl_per_dim"]
    assert [round(b.get_x() + b.get_width() / 2) for b in bars] == [0, 1, 2, 3]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    assert "index" in ax.get_xlabel() and "3 of 4 active" in ax.get_title()
    assert bars[2].get_facecolor() != bars[0].get_facecolor()  # the inactive one
    plt.close(fig)


def test_kl_bars_say_dark_only_when_some_bars_are_light():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = {
        "kl_per_dim": [0.1, 2.0],
        "posterior_mean_var": [0.5, 0.9],
        "active_threshold": 0.01,
        "active_units": 2,
    }
    fig, ax = plt.subplots()
    kl_bars(ax, record)
    assert ax.get_title() == "KL per dimension; 2 of 2 active"
    record["posterior_mean_var"] = [0.5, 0.001]
    kl_bars(ax, {**record, "active_units": 1})
    assert ax.get_title() == "KL per dimension; 1 of 2 active (dark; the others light)"
    plt.close(fig)


def test_the_metrics_table_is_one_metric_a_line():
    from src.evaluation.notebook import metrics_table

    evals: dict[str, dict[str, Any]] = {
        "best_test": {"step": 660, "elbo": -91.123456789, "iwae_nll": 88.5, "active_units": 9},
        "last_val": {"step": 660, "elbo": -92.0, "iwae_nll": None, "active_units": 8},
    }
    keys = ["step", "elbo", "iwae_nll", "active_units"]
    lines = metrics_table(evals, keys).splitlines()
    assert len(lines) == 1 + len(keys) and max(map(len, lines)) <= 14 + 2 * 12
    assert lines[0].split() == ["best_test", "last_val"]
    assert lines[2].split() == ["elbo", "-91.1235", "-92"]
    assert lines[3].split() == ["iwae_nll", "88.5", "-"]
