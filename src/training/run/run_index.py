"""<workdir>/runs.csv: one row when a run starts and one when it stops, appended by every run.

Concurrency: several runs (a sweep's workers, other users) append to the same file. Each row
is formatted in memory and written with a single os.write on an O_APPEND descriptor while an
exclusive fcntl.flock is held; the lock also makes "write the header if the file is empty"
race-free. A reader therefore sees whole rows only. (flock is advisory and local: on NFS use
one workdir per host.)
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import io
import os
import socket
import sys
from pathlib import Path
from typing import Any

FILE_NAME = "runs.csv"
COLUMNS = (
    "event",  # start | end | replaced (every earlier row of the run id is of a deleted run)
    "run_id",
    "experiment",
    "config_hash",
    "git_commit",
    "git_dirty",
    "host",
    "status",  # running at start; completed | interrupted | failed at end
    "started_at",  # UTC, ISO 8601, seconds
    "ended_at",
    "best_metric",
    "best_value",
    "best_step",
)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Appends one CSV row (header first if the file is new), atomically with respect to others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        if os.fstat(fd).st_size == 0:
            writer.writeheader()
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
        os.write(fd, buf.getvalue().encode())
    finally:
        os.close(fd)  # closing releases the lock


def read_rows(path: Path) -> list[dict[str, str]]:
    """The complete start and end rows of runs.csv (empty if it does not exist), without those
    of runs that --overwrite has deleted (the rows before a `replaced` row of their run id)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    replaced = {r.get("run_id"): i for i, r in enumerate(rows) if r.get("event") == "replaced"}
    return [
        r
        for i, r in enumerate(rows)
        if r.get("event") in ("start", "end") and i > replaced.get(r.get("run_id"), -1)
    ]


def _row(run_dir: Path, record: dict[str, Any], event: str, started_at: str) -> dict[str, Any]:
    from src.training.run.provenance import git_state

    git = git_state()
    best = record.get("best") or {}
    return {
        "event": event,
        "run_id": run_dir.name,
        "experiment": record.get("experiment"),
        "config_hash": record.get("config_hash"),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "host": socket.gethostname(),
        "status": record.get("status"),
        "started_at": started_at,
        "ended_at": now() if event == "end" else None,
        "best_metric": best.get("metric"),
        "best_value": best.get("value"),
        "best_step": best.get("step"),
    }


def index_path(run_dir: Path) -> Path:
    """runs.csv of the workdir that holds checkpoints/<run_id>."""
    return run_dir.parents[1] / FILE_NAME


def record_start(run_dir: Path, record: dict[str, Any], write: bool) -> str:
    """Appends the start row; returns the start time for record_end."""
    started_at = now()
    if write:
        append_row(index_path(run_dir), _row(run_dir, record, "start", started_at))
    return started_at


def record_replaced(run_dir: Path) -> None:
    """Appends a `replaced` row: the run's earlier rows describe a run --overwrite has deleted."""
    try:
        append_row(
            index_path(run_dir),
            {
                "event": "replaced",
                "run_id": run_dir.name,
                "host": socket.gethostname(),
                "status": "deleted",
                "ended_at": now(),
            },
        )
    except OSError as e:
        print(f"warning: could not append to {index_path(run_dir)}: {e}", file=sys.stderr)


def record_end(run_dir: Path, record: dict[str, Any], started_at: str, write: bool) -> None:
    """Appends the end row. Called from a finally block, so it must not hide the run's own error."""
    if not write:
        return
    try:
        append_row(index_path(run_dir), _row(run_dir, record, "end", started_at))
    except OSError as e:
        print(f"warning: could not append to {index_path(run_dir)}: {e}", file=sys.stderr)
