"""Determinism settings. Call configure_determinism() before JAX is imported."""

from __future__ import annotations

import os
import random

import numpy as np

# XLA flags that make GPU kernels deterministic (no atomics-based reductions, fixed autotuning).
# CPU and TPU XLA programs are deterministic for a fixed program and device count already.
DETERMINISTIC_XLA_FLAGS = ("--xla_gpu_deterministic_ops=true", "--xla_gpu_autotune_level=0")


def configure_determinism() -> str:
    """Adds the deterministic XLA flags to XLA_FLAGS (keeping the user's) and returns the result."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    for flag in DETERMINISTIC_XLA_FLAGS:
        name = flag.split("=")[0]
        if not any(f.split("=")[0] == name for f in flags):
            flags.append(flag)
    os.environ["XLA_FLAGS"] = " ".join(flags)
    return os.environ["XLA_FLAGS"]


def seed_host_rngs(seed: int) -> None:
    """Seeds Python's and NumPy's global RNGs. The code draws nothing from them; libraries might."""
    random.seed(seed)
    np.random.seed(seed)
