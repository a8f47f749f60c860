"""What produced a run: code version, command, software, hardware."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from src.training.run import identity
from src.utils.config import save_config
from src.utils.io import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "ml-collections",
    "scikit-learn",  # ships the digits data
    "tensorboardX",
)
# Environment variables that change which devices a run sees or how XLA behaves.
ENV_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "TPU_VISIBLE_CHIPS",
    "JAX_PLATFORMS",
    "JAX_ENABLE_X64",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "SWEEP_NAME",  # set by scripts/sweep.py for its trials
)
MAX_UNTRACKED = 20
# Where a SLURM job ran (the scheduler's environment): provenance key -> variable.
SLURM_VARS = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "restart_count": "SLURM_RESTART_COUNT",
    "node": "SLURMD_NODENAME",
    "partition": "SLURM_JOB_PARTITION",
    "nodelist": "SLURM_JOB_NODELIST",
    "ntasks": "SLURM_NTASKS",
}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict[str, Any]:
    """Commit, branch, and whether the working tree differs from it.

    Untracked files that git does not ignore count as dirty too: a new module imported by the
    run is not in the commit either. They are listed (at most MAX_UNTRACKED) next to the diff stat.
    """
    commit = _git("rev-parse", "HEAD")
    modified = _git("status", "--porcelain", "--untracked-files=no")
    others = _git("ls-files", "--others", "--exclude-standard")
    untracked = others.splitlines() if others else []
    dirty = (bool(modified) or bool(untracked)) if modified is not None else None
    return {
        "commit": commit,
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": dirty,
        "diff_stat": _git("diff", "HEAD", "--stat") if modified else None,
        "untracked": untracked[:MAX_UNTRACKED],
    }


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def scheduler() -> dict[str, str] | None:
    """The SLURM job this process runs in (job id, array task, node, partition), or None."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    found = {key: os.environ.get(var) for key, var in SLURM_VARS.items()}
    return {"name": "slurm", **{k: v for k, v in found.items() if v is not None}}


def collect(seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Provenance record for provenance.json (call after JAX has been initialised)."""
    import jax

    devices = jax.devices()
    return {
        "git": git_state(),
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "packages": package_versions(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "devices": {
            "backend": jax.default_backend(),
            "kinds": sorted({d.device_kind for d in devices}),
            "count": len(devices),
            "local_count": jax.local_device_count(),
            "process_count": jax.process_count(),
        },
        "seed": seed,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_enable_x64": bool(jax.config.read("jax_enable_x64")),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "scheduler": scheduler(),
        **(extra or {}),
    }


def write(
    config_path: Path,
    provenance_path: Path,
    cfg: Any,
    ident: identity.Identity,
    data_info: dict[str, Any] | None,
    first_step: int,
) -> None:
    """Writes config.yaml and provenance.json as training starts at first_step: a new run's
    record (data_info given), or the resumed run's with this resume appended to `resumes`. Both
    hold the identity with the config the run goes on with: a resume may change
    training.epochs, which config.yaml then records too."""
    if data_info is None:
        prov = identity.read_provenance(provenance_path)
        prov.setdefault("resumes", []).append(collect(cfg.training.seed, {"from_step": first_step}))
    else:
        prov = collect(cfg.training.seed, {"data": data_info})
    prov[identity.KEY] = ident.with_config(cfg).to_json()
    save_config(cfg, config_path)
    atomic_write_json(provenance_path, prov)
