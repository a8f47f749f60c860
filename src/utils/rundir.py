"""Run ids and the layout of a run's folders under the workdir."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import NamedTuple

from src.utils.errors import RunDirError

RUN_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


class RunPaths(NamedTuple):
    run_dir: Path  # <workdir>/checkpoints/<run_id>
    log_dir: Path  # <workdir>/logs/<run_id>
    figure_dir: Path  # <workdir>/figures/<run_id>

    @property
    def last(self) -> Path:
        return self.run_dir / "model_last"

    @property
    def best(self) -> Path:
        return self.run_dir / "model_best"

    @property
    def config(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.json"

    @property
    def provenance(self) -> Path:
        return self.run_dir / "provenance.json"


def default_run_id(experiment: str) -> str:
    return f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_paths(workdir: str | Path, run_id: str) -> RunPaths:
    """Checks run_id (letters, digits, '-', '_', '.'; never '.' or '..') and returns its folders."""
    if not RUN_ID.match(run_id) or set(run_id) == {"."}:
        raise RunDirError(
            f"--run_id {run_id!r}: use only letters, digits, '-', '_' and '.', e.g. baseline-s42"
        )
    root = Path(workdir)
    return RunPaths(
        root / "checkpoints" / run_id, root / "logs" / run_id, root / "figures" / run_id
    )


def prepare(paths: RunPaths, resume: bool, overwrite: bool) -> None:
    """Creates the run folders; refuses to reuse an existing run unless resuming or overwriting."""
    exists = paths.run_dir.exists() and any(paths.run_dir.iterdir())
    if resume and not paths.config.is_file():
        raise RunDirError(f"--resume: no run to resume at {paths.run_dir} (no config.yaml)")
    if exists and not resume:
        if not overwrite:
            raise RunDirError(
                f"run directory {paths.run_dir} already exists; pass --resume to continue it "
                "or --overwrite to replace it"
            )
        for folder in paths:
            shutil.rmtree(folder, ignore_errors=True)
    if resume:  # temporary files of atomic writes that a hard exit cut short
        for stale in paths.run_dir.glob(".*.tmp"):
            stale.unlink()
    for folder in paths:
        folder.mkdir(parents=True, exist_ok=True)
