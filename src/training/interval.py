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


def means(sums: dict[str, Any], count: int) -> dict[str, Any]:
    """Per-step means over the steps whose update was applied, plus skipped_steps (a count).

    Args:
      sums: host copies of Interval.sums; sums["nonfinite"] counts the dropped steps, whose
        other metrics the step zeroed.
      count: steps in the interval.
    """
    skipped = int(sums["nonfinite"])
    applied = count - skipped
    out: dict[str, Any] = {
        k: v / applied if applied else np.full_like(v, np.nan)
        for k, v in sums.items()
        if k != "nonfinite"
    }
    out["skipped_steps"] = skipped
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
