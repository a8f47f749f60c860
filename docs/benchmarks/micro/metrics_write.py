"""Micro-measurement behind docs/performance.md (not part of the package, not tested).

How long one metrics.json write takes as a run grows: a history like the baseline's (a train
record every 20 steps, a validation record every 100, 16 latent dimensions), written the way
the Recorder writes it (metrics_text with the records' lines encoded when they were logged,
atomic with fsync) and, for comparison, encoding every record at every write (until
d49a0e6) and with json.dumps(indent=2) (before a6accbc).
Run from the repository root: python docs/benchmarks/micro/metrics_write.py
"""

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, ".")
from src.training.run.recorder import encode_json, metrics_text  # noqa: E402
from src.utils.io import atomic_write_text  # noqa: E402


def record(step: int, split: str) -> dict:
    values = {"loss": 24.123456789, "elbo": -24.123456789, "recon": 20.1234567, "kl": 4.0123456}
    return {"step": step, "split": split, **values, "kl_per_dim": [0.123456789] * 16}


for steps in (3_000, 30_000, 100_000):
    history = [record(s, "train") for s in range(20, steps + 1, 20)]
    history += [record(s, "val") for s in range(100, steps + 1, 100)]
    data = {"run_id": "r", "history": history}
    lines = [encode_json(r) for r in history]
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in (
            ("indent=2", lambda d: json.dumps(d, indent=2, allow_nan=True) + "\n"),
            ("metrics_text, encoding every record", metrics_text),
            ("metrics_text, lines kept", lambda d, lines=lines: metrics_text(d, lines)),
        ):
            tic = time.perf_counter()
            for _ in range(5):
                atomic_write_text(Path(tmp) / "metrics.json", text(data))
            seconds = (time.perf_counter() - tic) / 5
            size = (Path(tmp) / "metrics.json").stat().st_size
            print(
                f"{steps} steps, {len(history)} records, {name}: {size / 1e6:.2f} MB, "
                f"{1e3 * seconds:.0f} ms per write"
            )
