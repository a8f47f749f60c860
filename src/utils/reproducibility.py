"""Determinism settings. Call configure_determinism() before JAX is imported."""

from __future__ import annotations

import os
import random

import numpy as np

# XLA flags that make GPU programs run-to-run deterministic (docs/performance.md, "GPU
# determinism"): xla_gpu_deterministic_ops excludes kernels that reduce with atomics (scatter,
# some reductions) and makes autotuning deterministic; xla_gpu_autotune_level=0 skips autotuning,
# so the kernels chosen cannot depend on timings. CPU and TPU XLA programs are deterministic for
# a fixed program and device count already; these flags do nothing there.
DETERMINISTIC_XLA_FLAGS = ("--xla_gpu_deterministic_ops=true", "--xla_gpu_autotune_level=0")


def configure_determinism(gpu: bool) -> str:
    """With gpu (compile.deterministic_gpu), adds the deterministic XLA flags to XLA_FLAGS,
    keeping any the user set; returns the result. Call before JAX starts a backend."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    for flag in DETERMINISTIC_XLA_FLAGS if gpu else ():
        name = flag.split("=")[0]
        if not any(f.split("=")[0] == name for f in flags):
            flags.append(flag)
    os.environ["XLA_FLAGS"] = " ".join(flags)
    return os.environ["XLA_FLAGS"]


def seed_host_rngs(seed: int) -> None:
    """Seeds Python's and NumPy's global RNGs. The code draws nothing from them; libraries might."""
    random.seed(seed)
    np.random.seed(seed)
