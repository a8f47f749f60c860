"""Micro-measurement behind docs/performance.md (not part of the package, not tested).

Host time of writing one train record (8 scalars, 16 latent dimensions) to TensorBoard:
through SummaryWriter.add_scalar / add_histogram, one event per value (the Recorder before
2026-11-25), against Recorder.tensorboard, one event per record. 3 x 500 records each.
Run from the repository root: python docs/benchmarks/micro/tensorboard_record.py
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tensorboardX import SummaryWriter

sys.path.insert(0, ".")
from src.training.run.recorder import Recorder  # noqa: E402

RECORD = {
    **dict.fromkeys(["elbo", "grad_norm", "kl", "kl_weight", "loss", "lr", "recon"], 1.5),
    "kl_per_dim": np.linspace(0.0, 2.0, 16).tolist(),
    "examples_per_sec": 36000.0,
}


def per_value(writer: SummaryWriter, step: int) -> None:
    for key, value in RECORD.items():
        if key == "kl_per_dim":
            writer.add_histogram(f"train/{key}", np.asarray(value), step)
            for d, v in enumerate(value):
                writer.add_scalar(f"train/{key}/{d}", v, step)
        else:
            writer.add_scalar(f"train/{key}", value, step)


def ms_per_record(write, records: int = 500) -> float:
    tic = time.perf_counter()
    for step in range(1, records + 1):
        write(step)
    return 1e3 * (time.perf_counter() - tic) / records


with tempfile.TemporaryDirectory() as tmp:
    writer = SummaryWriter(f"{tmp}/a")
    recorder = Recorder(
        Path(tmp) / "metrics.json",
        Path(tmp) / "b",
        {},
        tensorboard=True,
        console=False,
        write=True,
        resume=False,
        write_every_secs=1e9,
    )
    old, new = [], []
    for _ in range(3):
        old.append(ms_per_record(lambda step: per_value(writer, step)))
        new.append(ms_per_record(lambda step: recorder.tensorboard(step, "train", RECORD)))
    writer.close()
    recorder.close()
print(f"one event per value: {statistics.median(old):.2f} ms per record {old}")
print(f"one event per record: {statistics.median(new):.2f} ms per record {new}")
