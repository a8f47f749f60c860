"""The run's metric record: metrics.json (atomic), TensorBoard and the console.

metrics.json holds the whole history, so rewriting it for every record would cost O(records)
each time, O(records^2) over a run, plus an fsync per write. Records are therefore written at
most every `write_every_secs` seconds, and the loop forces a write (save()) before every
model_last save and at the end. So the file is never older than the newest checkpoint, which is what a
resumed run relies on: it keeps the records up to that checkpoint's step and replays the
rest. TensorBoard and the console get every record at once.

TensorBoard shows exactly the records of metrics.json, once each, also after a kill: a resumed
Recorder deletes the run's event files and writes the kept history again (truncate), since a
kill loses the events not yet flushed and the resumed run replays those after its checkpoint.

The file is indented JSON with one history record per line: readable, and written by json's
C encoder (json.dumps with indent runs the pure-Python one). Each record is encoded once, when
it is logged, and the lines are kept: a write joins them instead of encoding the whole history
again, so a write in a long run costs little more than the file's bytes.

Hand-written rather than a metrics library (clu.metric_writers, tensorboardX's SummaryWriter):
those write events only; the record here is also the resumable metrics.json, whose history is
cut back to a checkpoint's step on resume and replayed into TensorBoard exactly once.
Measurements behind these choices: docs/performance.md.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from src.training.run.console import Console
from src.utils.errors import StorageError
from src.utils.io import atomic_write_text, read_json

VECTOR_KEYS = (
    "kl_per_dim",
    "kl_per_group",
    "active_units_per_group",
    "kl_mass_units_per_group",
)


def _clean(value: Any) -> Any:
    """Python floats/ints/lists for JSON."""
    if isinstance(value, list | tuple | np.ndarray):
        return [_clean(v) for v in np.asarray(value).tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def encode_json(value: Any) -> str:
    """Compact JSON, NaN and inf included (as metrics.json has always held them)."""
    return json.dumps(value, allow_nan=True)


def metrics_text(data: dict[str, Any], history_lines: list[str] | None = None) -> str:
    """data as JSON: top-level keys indented, each history record compact on its own line.

    history_lines, when given, are data["history"]'s records already encode_json()d, one per record.
    """
    if history_lines is None:
        history_lines = [encode_json(r) for r in data["history"]]
    assert len(history_lines) == len(data["history"]), "history_lines out of step"
    fields = []
    for key, value in data.items():
        if key == "history":
            records = ",\n".join(f"    {line}" for line in history_lines)
            fields.append(f'  "history": [\n{records}\n  ]' if value else '  "history": []')
        else:
            fields.append(f"  {encode_json(key)}: {encode_json(value)}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


def read_record(path: Path) -> dict[str, Any]:
    """metrics.json's content, checked to be a record: an object whose history is a list of
    objects with a step and a split. Anything else (unreadable, `[]`, a record without step) is
    a StorageError (exit 4) naming the file."""
    try:
        data = read_json(path)
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror or e}") from None
    history = data.get("history", []) if isinstance(data, dict) else None
    fine = isinstance(history, list) and all(
        isinstance(r, dict) and isinstance(r.get("step"), int) and isinstance(r.get("split"), str)
        for r in history
    )
    if not fine:
        raise StorageError(
            f"{path}: not a run record (an object whose history records each have a step and "
            "a split); restore it from a copy of the run or start the run again with --overwrite"
        )
    return data


class Recorder:
    """Appends metric records to metrics.json and mirrors them to TensorBoard and the console.

    Only the writing process (process 0) creates a Recorder with write=True; others record
    nothing, so multi-host runs write each file once.
    """

    def __init__(
        self,
        metrics_path: Path,
        log_dir: Path,
        header: dict[str, Any],
        *,
        tensorboard: bool,
        console: bool | Console,
        write: bool,
        resume: bool,
        write_every_secs: float,
    ):
        self.path = metrics_path
        self.write = write
        self.write_every_secs = write_every_secs
        self.written_at = -math.inf
        # True: a plain Console; the loop passes one that knows the run's length.
        self.console = (
            None
            if not (console and write)
            else (console if isinstance(console, Console) else Console())
        )
        self.data: dict[str, Any] = {
            **header,
            "status": "running",
            "best": None,
            "final": {},
            "history": [],
        }
        if resume and metrics_path.is_file():
            saved = read_record(metrics_path)
            self.data.update({k: saved[k] for k in ("best", "final", "history") if k in saved})
        self.history_lines = [encode_json(r) for r in self.data["history"]]  # kept in step
        self.tb = None
        self.tb_rebuild = False  # truncate() writes the kept history to TensorBoard again
        if tensorboard and write:
            from tensorboardX import FileWriter  # imported only when used

            if resume:
                for old in Path(log_dir).glob("events.out.tfevents.*"):
                    old.unlink()
                self.tb_rebuild = True
            self.tb = FileWriter(str(log_dir))

    def truncate(self, step: int) -> None:
        """Drops records after step (a resumed run replays them exactly) and recomputes final.

        best is left alone: the loop sets it from the model_best checkpoint on disk. The first
        call of a resumed Recorder writes the kept records to TensorBoard again.
        """
        kept = [i for i, r in enumerate(self.data["history"]) if r["step"] <= step]
        self.data["history"] = [self.data["history"][i] for i in kept]
        self.history_lines = [self.history_lines[i] for i in kept]
        self.data["final"] = {r["split"]: r for r in self.data["history"]}
        if self.tb_rebuild:
            self.tb_rebuild = False
            for record in self.data["history"]:
                self.tensorboard(record["step"], record["split"], record)

    def log(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        record = {"step": step, "split": split, **{k: _clean(v) for k, v in metrics.items()}}
        line = encode_json(record)  # first: a record that cannot be encoded is not kept
        self.data["history"].append(record)
        self.history_lines.append(line)
        self.data["final"][split] = record
        self.tensorboard(step, split, record)
        if self.console is not None:
            self.console.record(step, split, record)
        if time.monotonic() - self.written_at >= self.write_every_secs:
            self.save()

    def tensorboard(self, step: int, prefix: str, values: dict[str, Any]) -> None:
        """Writes values as one TensorBoard event: `prefix/key` scalars; a vector key gets a
        histogram and one `prefix/key/index` scalar per entry.

        Hand-built Summary protos because SummaryWriter.add_scalar/add_histogram write one
        event per value and ~1500 exponential histogram bins: here one event per record and
        len(vector) equal-width bins, several times less host time per record.
        """
        if self.tb is None:
            return
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.summary import histogram

        def scalar(tag: str, value: float) -> Summary.Value:
            return Summary.Value(tag=tag, simple_value=value)

        out = []
        for key, value in values.items():
            if key in VECTOR_KEYS:
                array = np.asarray(value)
                if np.isfinite(array).all():  # numpy cannot bin inf or NaN
                    out += histogram(f"{prefix}/{key}", array, bins=len(value)).value
                out += [scalar(f"{prefix}/{key}/{d}", v) for d, v in enumerate(value)]
            elif key not in ("step", "split") and isinstance(value, int | float):
                out.append(scalar(f"{prefix}/{key}", value))
        self.tb.add_summary(Summary(value=out), global_step=step)

    def set_best(self, step: int, metric: str, value: float) -> None:
        self.data["best"] = {"step": step, "metric": metric, "value": value}

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    def save(self) -> None:
        """Writes metrics.json now."""
        self.written_at = time.monotonic()
        if self.write:
            try:
                atomic_write_text(self.path, metrics_text(self.data, self.history_lines))
            except OSError as e:
                raise StorageError(f"cannot write {self.path}: {e}") from e
        if self.tb is not None:
            # What tensorboardX's writer thread has taken from its queue reaches the file now;
            # events still queued follow within its flush_secs (a kill loses them; a resumed
            # run writes TensorBoard again from metrics.json).
            self.tb.flush()

    def close(self) -> None:
        self.save()
        self.close_tensorboard()

    def close_tensorboard(self) -> None:
        """Closes the TensorBoard writer (its thread), once."""
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None


def is_better(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best
