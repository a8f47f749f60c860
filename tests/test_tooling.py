"""Repository tooling: the commit-message hook and the layout the project promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


@pytest.mark.parametrize(
    "subject, ok",
    [
        ("feat: add KL per-dimension logging", True),
        ("fix(data): correct stride mismatch", True),
        ("exp: increase latent dimension to 768", True),
        ("Added stuff", False),
        ("feat:missing space", False),
        ("feature: not a type", False),
    ],
)
def test_commit_msg_hook(tmp_path: Path, subject: str, ok: bool):
    msg = tmp_path / "MSG"
    msg.write_text(subject + "\n\nbody\n")
    hook = REPO / "scripts" / "hooks" / "check_commit_msg.py"
    result = subprocess.run([sys.executable, str(hook), str(msg)], capture_output=True, text=True)
    assert (result.returncode == 0) == ok, result.stderr


def test_repository_layout():
    expected = [
        "README.md",
        "ARCHITECTURE.md",
        "EXPERIMENTS.md",
        "REPRODUCIBILITY.md",
        "ROADMAP.md",
        "pyproject.toml",
        ".gitignore",
        ".pre-commit-config.yaml",
        ".cursorignore",
        "configs/default.yaml",
        "configs/experiment/baseline.yaml",
        "scripts/train.py",
        "scripts/evaluate.py",
        "scripts/sweep.py",
        "src/__init__.py",
        "results/checkpoints/.gitkeep",
        "results/logs/.gitkeep",
        "results/figures/.gitkeep",
    ]
    missing = [p for p in expected if not (REPO / p).exists()]
    assert missing == []
    for pkg in ("data", "models", "training", "evaluation", "utils", "experiments"):
        assert (REPO / "src" / pkg / "__init__.py").is_file()
    assert set((REPO / ".cursorignore").read_text().split()) >= {
        "results/",
        "checkpoints/",
        "logs/",
        "__pycache__/",
    }


def test_tensorboard_is_a_dependency_and_reads_the_run_logs(tmp_path: Path):
    """`tensorboard --logdir results/logs` (README) works after the setup command: TensorBoard
    is a declared dependency, and its own event loader reads what the Recorder writes."""
    import tomllib

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from src.training.run.recorder import Recorder

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {
        dep.split(">")[0].split("=")[0].split("[")[0].strip() for dep in project["dependencies"]
    }
    assert "tensorboard" in names

    recorder = Recorder(
        tmp_path / "metrics.json",
        tmp_path / "logs",
        {"run_id": "r"},
        tensorboard=True,
        console=False,
        write=True,
        resume=False,
        write_every_secs=0.0,
    )
    recorder.log(10, "train", {"loss": 1.5, "kl_per_dim": [0.5, 1.0]})
    recorder.log(20, "train", {"loss": 1.25, "kl_per_dim": [0.25, 1.0]})
    recorder.close()
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(10, 1.5), (20, 1.25)]
    assert events.Tags()["histograms"] != []
