"""The analysis notebook's helpers (its command, scripts/analyze.py, is cli.analyze_main).

notebooks/analysis.ipynb reads a saved run; which one: LATENT_VAE_RUN_DIR, else the newest run
under results/checkpoints (`pick_run`). `python scripts/analyze.py [--run_dir=DIR]` executes
the notebook headless on that run and writes `<workdir>/figures/<run_id>/analysis.html` (the
figures embedded) and `analysis.ipynb` (executed). Nothing here imports JAX: picking a run and
reporting a mistake take no time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from src.training.run import identity
from src.utils.errors import RunDirError, StorageError

RUN_DIR_ENV = "LATENT_VAE_RUN_DIR"
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "analysis.ipynb"
# How to make a run to analyse, for the message when there is none.
MAKE_A_RUN = "python scripts/train.py --config=configs/experiment/baseline.yaml"


def run_folders(workdir: Path) -> list[Path]:
    """The run folders of workdir/checkpoints that have a metrics.json, newest first (by the time
    metrics.json was last written). Hidden folders (runs set aside by --overwrite) are left out."""
    root = workdir / "checkpoints"
    if not root.is_dir():
        return []
    runs = [
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "metrics.json").is_file()
    ]
    return sorted(runs, key=lambda p: ((p / "metrics.json").stat().st_mtime_ns, p.name))[::-1]


def pick_run(run_dir: str | Path | None = None, workdir: str | Path = "results") -> Path:
    """The run to analyse: run_dir if given, else LATENT_VAE_RUN_DIR, else the newest run under
    workdir/checkpoints. A RunDirError (one line saying what to pass) when there is none."""
    chosen = run_dir or os.environ.get(RUN_DIR_ENV)
    if chosen:
        path = Path(chosen).resolve()
        if not (path / "metrics.json").is_file():
            raise RunDirError(
                f"{path}: no metrics.json; pass a run folder, <workdir>/checkpoints/<run_id>"
            )
        return path
    runs = run_folders(Path(workdir))
    if not runs:
        raise RunDirError(
            f"no run under {Path(workdir) / 'checkpoints'}: pass --run_dir=<workdir>/checkpoints/"
            f"<run_id> (or set {RUN_DIR_ENV}) or train one first ({MAKE_A_RUN})"
        )
    return runs[0].resolve()


def checkpoint_step(run_dir: Path, name: str) -> int | None:
    """The newest complete step of model_<name> (its numbered folders), None without one."""
    folder = run_dir / f"model_{name}"
    steps = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(steps) if steps else None


def read_evals(run_dir: Path) -> dict[str, dict[str, Any]]:
    """eval/<checkpoint>_<split>.json records of scripts/evaluate.py, by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "eval").glob("*.json"))}


def stale_evals(run_dir: Path, evals: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One warning per eval record that is not of this run (its run identity differs from
    provenance.json's: the run was replaced) or not of its checkpoint's current step (after a resume,
    model_best or model_last moved on): its numbers are not those of what the notebook restores."""
    warnings = []
    try:
        run = identity.read(run_dir).run
    except StorageError:  # no readable provenance.json: only the steps can be compared
        run = None
    for name, record in evals.items():
        checkpoint = record.get("checkpoint", name.split("_")[0])
        step = checkpoint_step(run_dir, checkpoint)
        if run is not None and record.get("run") != run:
            warnings.append(
                f"warning: eval/{name}.json was not written for this run (its identity "
                f"{record.get('run')}, the run's {run}: replaced by --overwrite since?); re-run "
                f"python scripts/evaluate.py --run_dir={run_dir} --checkpoint={checkpoint} "
                f"--split={record.get('split')}"
            )
        elif step is not None and record.get("step") != step:
            warnings.append(
                f"warning: eval/{name}.json is of step {record.get('step')} but model_{checkpoint} "
                f"is now at step {step} (resumed since?); re-run python scripts/evaluate.py "
                f"--run_dir={run_dir} --checkpoint={checkpoint} --split={record.get('split')}"
            )
    return warnings


def kl_bars(ax: Any, record: Mapping[str, Any]) -> None:
    """KL per latent dimension of an eval record as bars in dimension order, labelled by the
    dimension's index; active units (Cov_x(E_q[z_d|x]) above the threshold) dark."""
    kl = list(record["kl_per_dim"])
    variance = record.get("posterior_mean_var")
    threshold = record.get("active_threshold")
    if variance is not None and threshold is not None:
        colors = ["tab:blue" if v > threshold else "lightgray" for v in variance]
    else:
        colors = ["tab:blue"] * len(kl)
    index = list(range(len(kl)))
    ax.bar(index, kl, color=colors)
    ax.set_xticks(index, [str(d) for d in index], fontsize=7 if len(kl) > 32 else None)
    ax.set_xlabel("latent dimension (index)")
    ax.set_ylabel("KL(q(z_d|x) || p(z_d)) [nats]")
    active = record.get("active_units")
    legend = " (dark; the others light)" if len(set(colors)) > 1 else ""
    ax.set_title(f"KL per dimension; {active} of {len(kl)} active{legend}")


def metrics_table(evals: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> str:
    """The eval records side by side, one metric a line and one record a column, so the table
    stays narrow however many metrics it shows (a page 1200 px wide holds a few records)."""
    width = max(12, *(len(name) + 2 for name in evals))
    lines = [f"{'':<14}" + "".join(f"{name:>{width}}" for name in evals)]
    for key in keys:
        cells = "".join(f"{_cell(rec.get(key)):>{width}}" for rec in evals.values())
        lines.append(f"{key:<14}" + cells)
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
