"""runs.csv (appended by every run, also concurrently) and provenance.json fields."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from src.training.run import provenance, run_index

WRITERS, ROWS = 4, 50


def _append_many(path: str, writer: int) -> None:
    for i in range(ROWS):
        # A long field makes torn or interleaved writes visible if they happened.
        row = {"event": "start", "run_id": f"w{writer}-{i}", "experiment": "x" * 2000}
        run_index.append_row(Path(path), row)


def test_concurrent_appends_give_whole_rows_and_one_header(tmp_path: Path):
    path = tmp_path / "runs.csv"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), w)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(run_index.COLUMNS)
    assert len(lines) == 1 + WRITERS * ROWS
    rows = run_index.read_rows(path)
    assert sorted(r["run_id"] for r in rows) == sorted(
        f"w{w}-{i}" for w in range(WRITERS) for i in range(ROWS)
    )
    assert all(r["experiment"] == "x" * 2000 for r in rows)


def test_start_and_end_rows_of_a_run(tmp_path: Path):
    run_dir = tmp_path / "checkpoints" / "r1"
    record = {"experiment": "baseline", "config_hash": "abc", "status": "running", "best": None}
    started = run_index.record_start(run_dir, record, write=True)
    done = {**record, "status": "completed", "best": {"metric": "elbo", "value": -3.5, "step": 9}}
    run_index.record_end(run_dir, done, started, write=True)
    run_index.record_start(tmp_path / "checkpoints" / "r2", record, write=False)
    start, end = run_index.read_rows(tmp_path / "runs.csv")
    assert (start["event"], start["status"], start["ended_at"]) == ("start", "running", "")
    assert (end["event"], end["status"], end["best_value"], end["best_step"]) == (
        "end",
        "completed",
        "-3.5",
        "9",
    )
    assert start["run_id"] == end["run_id"] == "r1" and end["started_at"] == started
    assert end["ended_at"] >= started and end["git_commit"]


def test_provenance_has_every_field():
    prov = provenance.collect(seed=3)
    assert {"commit", "branch", "dirty", "diff_stat", "untracked"} <= set(prov["git"])
    assert prov["git"]["diff_stat"] or not prov["git"]["dirty"] or prov["git"]["untracked"]
    assert {"command", "cwd", "started_at", "python", "host", "xla_flags", "env"} <= set(prov)
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn"):
        assert prov["packages"][name], name
    assert prov["devices"]["count"] >= 1 and prov["devices"]["kinds"]
    assert prov["seed"] == 3 and prov["jax_enable_x64"] is False
