"""What produced a run: code version, command, software, hardware."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    dirty = bool(status) if status is not None else None
    return {
        "commit": commit,
        "dirty": dirty,
        "diff_stat": _git("diff", "HEAD", "--stat") if dirty else None,
    }


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect(seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Provenance record for provenance.json (call after JAX has been initialised)."""
    import jax

    devices = jax.devices()
    return {
        "git": git_state(),
        "command": [sys.executable, *sys.argv],
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
        **(extra or {}),
    }
