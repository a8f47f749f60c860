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
