"""Test helpers: paths, tiny settings, training in process, reading a run's state back, and a
subprocess runner for the scripts. JAX is imported only by the helpers that need it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

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


# The history values that depend on the clock, not on the computation.
TIMING_KEYS = frozenset({"examples_per_sec"})


def without_timings(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """history without its TIMING_KEYS: what two runs of one computation share bit for bit."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def train(
    workdir: Path,
    run_id: str,
    overrides: list[str],
    experiment: Path = BASELINE,
    data: str | None = None,
) -> tuple[dict[str, Any], Any]:
    """Trains in this process as `train.py --config=experiment [--data=data]` with the
    overrides would; returns (metrics.json's content, the run's RunPaths)."""
    from src.training.loop import train_and_evaluate
    from src.training.run.rundir import prepare, run_paths
    from src.utils.config import load_config

    cfg = load_config(experiment, {"data": data} if data else None, overrides)
    paths = run_paths(workdir, run_id)
    prepare(paths, resume=False, overwrite=False)
    return train_and_evaluate(cfg, paths, resume=False), paths


def read_state(folder: Path, step: int | None = None) -> tuple[int, Any]:
    """(step, state) of an Orbax folder (model_last, model_best) at step (default: the latest),
    restored as saved, without a target: {"step", "params", "opt_state"} of host arrays."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(folder.absolute()) as manager:
        step = manager.latest_step() if step is None else step
        args = ocp.args.Composite(state=ocp.args.StandardRestore())
        restored = manager.restore(step, args=args)
    return step, restored["state"]


def assert_same_arrays(a: Any, b: Any) -> None:
    """Two pytrees with the same leaves, bit for bit."""
    import jax

    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


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


def inject_nan_at(monkeypatch: Any, calls: set[int]) -> None:
    """Makes the batches of the given calls of the loop (0-based; = steps at steps_per_call 1)
    NaN, in this process only."""
    from src.data import batches

    original = batches.DeviceBatches.chunk
    counter = {"n": 0}

    def chunk(self: Any, *args: Any, **kwargs: Any) -> Any:
        rows = original(self, *args, **kwargs)
        n, counter["n"] = counter["n"], counter["n"] + 1
        if n not in calls:
            return rows
        if isinstance(rows, batches.Rows):  # the same program as every other call
            return dataclasses.replace(rows, x=rows.x * np.nan)
        return rows * np.nan

    monkeypatch.setattr(batches.DeviceBatches, "chunk", chunk)


def at_batch(monkeypatch: Any, call: int, action: Any) -> None:
    """Runs action() when the loop asks for the batches of the given call (0-based), before
    dispatching it. Several at_batch patches stack."""
    from src.data import batches

    original = batches.DeviceBatches.chunk
    counter = {"n": 0}

    def chunk(self: Any, *args: Any, **kwargs: Any) -> Any:
        n, counter["n"] = counter["n"], counter["n"] + 1
        if n == call:
            action()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(batches.DeviceBatches, "chunk", chunk)
