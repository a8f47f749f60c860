"""Test helpers: paths, tiny settings and a subprocess runner for the scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from src.data.catalog import IDX_FILES
from src.data.idx import write_idx

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


# A persistent XLA compilation cache shared by the test processes: a script run then spends
# about a third of the CPU time it would compiling. A cached executable is the same program, so
# the numbers do not change. conftest.py puts these in os.environ before JAX is imported.
JAX_CACHE_ENV = {
    "JAX_COMPILATION_CACHE_DIR": str(Path(tempfile.gettempdir()) / "latent-vae-tests-jax-cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
}


def script_env() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0"}


def run_script(
    script: str, *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Runs scripts/<script> in a fresh interpreter, as a user would (env: extra variables)."""
    env = {**script_env(), **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def write_idx_dataset(
    directory: Path, n_train: int, n_test: int, gz: bool, side: int = 28, seed: int = 0
) -> dict[str, np.ndarray]:
    """Writes the four MNIST-style IDX files of random uint8 images; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for role, array in arrays.items():
        write_idx(directory / (IDX_FILES[role] + (".gz" if gz else "")), array)
    return arrays
