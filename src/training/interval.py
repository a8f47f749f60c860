"""Train metrics summed over a logging interval, and their exact round trip through a checkpoint.

A checkpoint can fall inside a logging interval (a SIGTERM save, or checkpoint.every_steps not a
multiple of logging.every_steps). The running sums are saved with it, so a resumed run finishes
the interval with the very same float32 sums and its train records equal those of a run that
never stopped, bit for bit. float32 -> Python float (float64) -> JSON text -> float32 is exact.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np


class Interval(NamedTuple):
    # per-metric sums over the interval's steps, added on the device by the compiled call
    # (src/training/multistep.py); None if empty
    sums: dict[str, jax.Array] | None
    steps: int  # steps in the interval, skipped ones included
    seconds: float  # wall clock of those steps spent before the current timer started


EMPTY = Interval(None, 0, 0.0)
COUNTS = ("nonfinite", "skipped_grad_norm")  # step flags whose sums are counts, not means


def means(sums: dict[str, Any], count: int) -> dict[str, Any]:
    """Per-step means over the steps with finite metrics, plus the counts skipped_steps (updates
    dropped) and, with training.skip_grad_norm on, skipped_grad_norm (of those, the ones dropped
    for a large gradient norm, whose finite metrics are in the means).

    Args:
      sums: host copies of Interval.sums; sums["nonfinite"] counts the non-finite steps, whose
        other metrics the step zeroed; sums["skipped_grad_norm"], if present, the others.
      count: steps in the interval.
    """
    nonfinite = int(sums["nonfinite"])
    applied = count - nonfinite
    out: dict[str, Any] = {
        k: v / applied if applied else np.full_like(v, np.nan)
        for k, v in sums.items()
        if k not in COUNTS
    }
    large = int(sums.get("skipped_grad_norm", 0))
    out["skipped_steps"] = nonfinite + large
    if "skipped_grad_norm" in sums:
        out["skipped_grad_norm"] = large
    return out


def to_json(interval: Interval, seconds: float) -> dict[str, Any]:
    """The interval as JSON (exact values and dtypes), with seconds the time spent so far."""
    sums = None
    if interval.sums is not None:
        sums = {
            k: {"dtype": str(v.dtype), "value": np.asarray(v).tolist()}
            for k, v in jax.device_get(interval.sums).items()
        }
    return {"sums": sums, "steps": interval.steps, "seconds": seconds}


def from_json(data: dict[str, Any] | None, sharding: jax.sharding.Sharding) -> Interval:
    """Inverse of to_json; sums are placed with sharding, like the train step's metrics."""
    if not data:
        return EMPTY
    sums = None
    if data["sums"] is not None:
        sums = {
            k: jax.device_put(np.asarray(v["value"], np.dtype(v["dtype"])), sharding)
            for k, v in data["sums"].items()
        }
    return Interval(sums, int(data["steps"]), float(data["seconds"]))
