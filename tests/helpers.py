"""Test helpers: paths, tiny settings and a subprocess runner for the scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "configs" / "experiment" / "baseline.yaml"

# Overrides that shrink the baseline to a few seconds of training.
TINY = [
    "training.epochs=2",
    "training.batch_size=32",
    "model.hidden_dims=[32]",
    "model.latent_dim=4",
    "logging.every_steps=10",
    "logging.console=false",
    "eval.every_steps=20",
    "checkpoint.every_steps=20",
]


def run_script(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs scripts/<script> in a fresh interpreter, as a user would."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )
