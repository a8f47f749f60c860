"""Hardening (issue 18): no run is lost or silently corrupted, whatever the user, the disk or the
shell does. Each test fails on 16a4af9. Runs use the tiny baseline (tests/helpers.py TINY)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from src.training.run import run_index
from src.training.run.rundir import lock_run, prepare, run_paths
from src.utils.config import load_config, save_config
from src.utils.errors import ConfigError, DataError, RunDirError
from src.utils.io import read_json
from tests.helpers import BASELINE, REPO, TINY, at_batch, inject_nan_at


def cli_args(workdir: Path, run_id: str, *extra: str) -> list[str]:
    return [
        f"--config={BASELINE}",
        f"--workdir={workdir}",
        f"--run_id={run_id}",
        *(f"--config.{o}" for o in TINY),
        *extra,
    ]


def fake_run(workdir: Path, run_id: str) -> dict[Path, bytes]:
    """A completed run's files (not a real checkpoint) and its runs.csv rows; returns the files."""
    paths = run_paths(workdir, run_id)
    prepare(paths, resume=False, overwrite=False)
    files = {
        paths.config: b"experiment: {name: old}\n",
        paths.metrics: json.dumps({"run_id": run_id, "status": "completed"}).encode(),
        paths.last / "88" / "state" / "data": b"\x01" * 100,
        paths.log_dir / "events.out.tfevents.1": b"events",
        paths.figure_dir / "samples.png": b"png",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    record = {"experiment": "old", "status": "completed"}
    started = run_index.record_start(paths.run_dir, record, write=True)
    run_index.record_end(paths.run_dir, record, started, write=True)
    return files


def assert_files(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        assert path.is_file() and path.read_bytes() == data, path


def leftovers(workdir: Path) -> list[str]:
    """Folders set aside by --overwrite that are still there."""
    return sorted(
        p.name
        for sub in ("checkpoints", "logs", "figures")
        for p in (workdir / sub).glob(".*")
        if p.is_dir()
    )


def index_rows(workdir: Path) -> list[dict[str, str]]:
    return run_index.read_rows(workdir / run_index.FILE_NAME)


# --- 1. --overwrite keeps the old run until the new one has started.


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--config.training.batch_size=100000"], ConfigError, "training.batch_size (100000)"),
        (["--data=mnist", "--config.data.dir={empty}"], DataError, "{empty}"),
    ],
)
def test_overwrite_that_fails_its_checks_keeps_the_old_run(tmp_path, extra, error, message):
    from src.training.entry import main

    files = fake_run(tmp_path, "keep")
    before = (tmp_path / "runs.csv").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.format(empty=empty) for a in extra]
    with pytest.raises(error, match=re.escape(message.format(empty=empty))):
        main(cli_args(tmp_path, "keep", "--overwrite", *args))
    assert_files(files)
    assert leftovers(tmp_path) == []
    assert (tmp_path / "runs.csv").read_text() == before  # still true: the run is there


def test_overwrite_deletes_the_old_run_once_the_new_one_starts(tmp_path, monkeypatch):
    from src.training import loop, setup
    from src.training.entry import main

    files = fake_run(tmp_path, "keep")
    seen: dict[str, Any] = {}
    load_splits, record_start = setup.load_splits, loop.run_index.record_start

    def checking(cfg: Any) -> Any:  # the data checks: the old run is set aside, not deleted
        seen["at the checks"] = leftovers(tmp_path)
        return load_splits(cfg)

    def starting(run_dir: Path, record: dict[str, Any], write: bool) -> str:
        seen["at the start"] = leftovers(tmp_path)
        return record_start(run_dir, record, write)

    monkeypatch.setattr(setup, "load_splits", checking)
    monkeypatch.setattr(loop.run_index, "record_start", starting)
    assert main(cli_args(tmp_path, "keep", "--overwrite")) == 0
    assert seen == {"at the checks": [".keep.replaced"] * 3, "at the start": []}
    assert not any(p.exists() and p.read_bytes() == data for p, data in files.items())
    assert leftovers(tmp_path) == []
    rows = index_rows(tmp_path)  # only the new run's rows
    assert [(r["event"], r["experiment"], r["status"]) for r in rows] == [
        ("start", "baseline", "running"),
        ("end", "baseline", "completed"),
    ]
    raw = (tmp_path / "runs.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in raw[1:]] == ["start", "end", "replaced", "start", "end"]


def test_an_overwrite_killed_before_its_start_is_undone_by_the_next_command(tmp_path, capsys):
    files = fake_run(tmp_path, "keep")
    paths = run_paths(tmp_path, "keep")
    prepare(paths, resume=False, overwrite=True)  # then the process dies: no commit, no restore
    (paths.run_dir / "config.yaml").write_text("new run's half-written files\n")
    assert not any(p.exists() and p.read_bytes() == data for p, data in files.items())
    prepare(paths, resume=True, overwrite=False)  # e.g. --resume: gets the old run back
    assert_files(files)
    assert leftovers(tmp_path) == []
    assert "the old run is restored" in capsys.readouterr().err


def test_an_overwrite_killed_after_its_commit_point_finishes_deleting(tmp_path):
    files = fake_run(tmp_path, "keep")
    paths = run_paths(tmp_path, "keep")
    replacement = prepare(paths, resume=False, overwrite=True)
    run_folder, aside = replacement.moved[0]
    aside.rename(aside.with_name(".keep.deleted"))  # the commit's first rename, then a kill
    (paths.run_dir / "metrics.json").write_text("{}")
    with lock_run(paths), pytest.raises(RunDirError, match="already exists"):
        prepare(paths, resume=False, overwrite=False)
    assert leftovers(tmp_path) == []
    assert not any(p.exists() and p.read_bytes() == data for p, data in files.items())
    assert (paths.run_dir / "metrics.json").read_text() == "{}"


# --- 2. A closed output pipe never stops a run; --resume without a checkpoint says so.


def test_a_closed_output_pipe_does_not_stop_training(tmp_path, monkeypatch):
    """As `train.py ... 2>&1 | head -3`: stdout and stderr are a pipe whose reader has gone."""
    from src.training.entry import main

    read_end, write_end = os.pipe()
    os.close(read_end)
    broken = open(write_end, "w", buffering=1)  # noqa: SIM115 (closed below)
    monkeypatch.setattr(sys, "stdout", broken)
    monkeypatch.setattr(sys, "stderr", broken)
    try:
        status = main(cli_args(tmp_path, "pipe", "--config.logging.console=true"))
    finally:
        monkeypatch.undo()
    assert status == 0
    record = read_json(tmp_path / "checkpoints" / "pipe" / "metrics.json")
    assert record["status"] == "completed"
    steps = [p.name for p in (tmp_path / "checkpoints" / "pipe" / "model_last").iterdir()]
    assert str(record["total_steps"]) in steps
    broken.close()  # its descriptor now points at /dev/null: closing flushes nothing to a pipe


def test_resume_of_a_run_without_checkpoint_says_so(tmp_path):
    from src.training.entry import main

    paths = run_paths(tmp_path, "early")
    prepare(paths, resume=False, overwrite=False)
    save_config(load_config(BASELINE, overrides=TINY), paths.config)  # killed before a save
    with pytest.raises(RunDirError, match=r"run early has no checkpoint in .*--overwrite"):
        main([f"--workdir={tmp_path}", "--run_id=early", "--resume"])
    assert not paths.metrics.exists()


# --- 3. One writer per run folder.

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def held_lock(tmp_path):
    """A process holding the writer lock of run `busy`, as a training train.py would."""
    paths = run_paths(tmp_path, "busy")
    paths.lock.parent.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(paths.lock)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield paths, proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_run_and_the_holder(held_lock):
    from src.training.entry import main

    paths, proc = held_lock
    workdir = paths.run_dir.parents[1]
    for extra in (["--overwrite"], []):
        with pytest.raises(RunDirError, match=f"run busy is in use by process {proc.pid}"):
            main(cli_args(workdir, "busy", *extra))
    prepare(paths, resume=False, overwrite=False)
    save_config(load_config(BASELINE, overrides=TINY), paths.config)
    with pytest.raises(RunDirError, match=f"run busy is in use by process {proc.pid}"):
        main([f"--workdir={workdir}", "--run_id=busy", "--resume"])
    assert sorted(p.name for p in paths.run_dir.iterdir()) == ["config.yaml"]  # nothing written
    proc.kill()  # the lock dies with its process
    proc.wait()
    with lock_run(paths):
        pass


def test_a_sweep_does_not_start_a_trial_whose_run_is_held(tmp_path):
    from src.experiments import runner
    from src.experiments.spec import expand, load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nexperiment: {BASELINE}\nseeds: [1]\n")
    spec = load_sweep(path)
    (trial,) = expand(spec)
    paths = run_paths(tmp_path, trial.run_id)
    paths.lock.parent.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(paths.lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        outcome = runner.run_trial(spec, trial, tmp_path, tmp_path / "logs", {})
    finally:
        proc.kill()
        proc.wait()
    assert outcome.status == "busy" and f"in use by process {proc.pid}" in outcome.error
    assert not paths.run_dir.exists()  # nothing started, nothing written


# --- 13, 15. Signals: SIGHUP as SIGTERM; before the start, nothing changes; at the end, the exit
# status and the record agree.


@pytest.fixture
def default_handlers():
    """Handlers standing in for the default action (death) of SIGTERM/SIGHUP/SIGINT, which would
    end pytest: a signal the command leaves to them is listed instead."""
    reached: list[str] = []
    sigs = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {
        s: signal.signal(s, lambda n, f: reached.append(signal.Signals(n).name)) for s in sigs
    }
    yield reached
    for s, handler in previous.items():
        signal.signal(s, handler)


def test_sighup_stops_a_run_like_sigterm(tmp_path, monkeypatch, default_handlers, capsys):
    from src.training.entry import main

    at_batch(monkeypatch, 29, lambda: os.kill(os.getpid(), signal.SIGHUP))
    assert main(cli_args(tmp_path, "hup")) == 128 + signal.SIGHUP
    assert default_handlers == []
    record = read_json(tmp_path / "checkpoints" / "hup" / "metrics.json")
    assert record["status"] == "interrupted" and record["signal"] == "SIGHUP"
    assert record["stopped_at_step"] == 30
    assert "--run_id=hup --resume" in capsys.readouterr().err


def test_a_signal_before_training_starts_keeps_the_replaced_run(
    tmp_path, monkeypatch, default_handlers, capsys
):
    from src.training import setup
    from src.training.entry import main

    files = fake_run(tmp_path, "keep")
    load_splits = setup.load_splits

    def interrupted(cfg: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return load_splits(cfg)

    monkeypatch.setattr(setup, "load_splits", interrupted)
    assert main(cli_args(tmp_path, "keep", "--overwrite")) == 128 + signal.SIGTERM
    assert default_handlers == []
    assert_files(files)
    assert leftovers(tmp_path) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SIGTERM: stopped before training started" in err[0]


def test_a_signal_after_the_loop_leaves_a_completed_run_and_exit_0(
    tmp_path, monkeypatch, default_handlers
):
    """The last moments: the loop has ended, the record is being closed."""
    from src.training import loop
    from src.training.entry import main

    record_end = loop.run_index.record_end

    def late(*args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        record_end(*args, **kwargs)

    monkeypatch.setattr(loop.run_index, "record_end", late)
    assert main(cli_args(tmp_path, "late")) == 0
    assert default_handlers == []  # no default action: the process would have died with 143
    assert read_json(tmp_path / "checkpoints" / "late" / "metrics.json")["status"] == "completed"


def test_a_signal_after_the_command_ended_exits_with_its_status():
    """Run as the script, the guard stays installed while the interpreter shuts down."""
    code = (
        "import os, signal, time\n"
        "from src.training.run.signals import CommandGuard\n"
        "guard = CommandGuard(keep=True).__enter__()\n"
        "guard.phase = 'after'\n"
        "guard.finish(3)\n"
        "assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.5)\n"
        "raise SystemExit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60)
    assert result.returncode == 3


# --- 8. A run id too long for a file name.


def test_a_300_character_run_id_is_refused_naming_the_limit(tmp_path):
    from src.training.entry import main

    with pytest.raises(RunDirError, match="300 characters; at most 200"):
        main(cli_args(tmp_path, "a" * 300))
    assert not (tmp_path / "checkpoints").exists()


# --- 11. nan_policy skip does not hide a divergence.


def test_skipping_more_than_the_allowed_share_of_steps_fails_the_run(tmp_path, monkeypatch, capsys):
    from src.training.entry import main

    inject_nan_at(monkeypatch, set(range(20, 88)))  # diverged after step 20
    status = main(cli_args(tmp_path, "skip", "--config.training.nan_policy=skip"))
    assert status == 3
    record = read_json(tmp_path / "checkpoints" / "skip" / "metrics.json")
    assert record["status"] == "failed" and record["skipped_steps"] == 10
    # Found when step 30's record is written, after step 31 has been dispatched (loop.py).
    assert record["failure"]["step"] == 30 and record["stopped_at_step"] == 31
    assert "10 of 30 steps skipped" in record["failure"]["reason"]
    assert "training.max_skipped_fraction=0.1" in capsys.readouterr().err


def test_a_nonfinite_validation_fails_the_run(tmp_path, monkeypatch):
    import numpy as np

    from src.training import loop
    from src.training.entry import main

    evaluate_split = loop.evaluate_split

    def diverging(*args: Any, **kwargs: Any) -> dict[str, Any]:
        metrics = evaluate_split(*args, **kwargs)
        return {**metrics, "elbo": -np.inf}

    monkeypatch.setattr(loop, "evaluate_split", diverging)
    status = main(cli_args(tmp_path, "val", "--config.training.nan_policy=skip"))
    assert status == 3
    record = read_json(tmp_path / "checkpoints" / "val" / "metrics.json")
    assert record["status"] == "failed" and record["stopped_at_step"] == 20
    assert record["failure"] == {"step": 20, "reason": "non-finite validation elbo"}


# --- 9. A truncated metrics.json is named, not a traceback.


@pytest.fixture
def stopped_run(tmp_path, monkeypatch, default_handlers) -> Path:
    """A tiny run stopped by SIGTERM at step 30 (model_last holds steps 20 and 30); its run
    folder."""
    from src.training.entry import main

    at_batch(monkeypatch, 29, lambda: os.kill(os.getpid(), signal.SIGTERM))
    keep = "--config.checkpoint.keep_last=2"
    assert main(cli_args(tmp_path, "stopped", keep)) == 128 + signal.SIGTERM
    monkeypatch.undo()
    return tmp_path / "checkpoints" / "stopped"


def resume(run_dir: Path) -> int:
    from src.training.entry import main

    return main([f"--workdir={run_dir.parents[1]}", f"--run_id={run_dir.name}", "--resume"])


def test_resume_with_a_truncated_metrics_json_names_the_file(stopped_run):
    from src.utils.errors import StorageError

    metrics = stopped_run / "metrics.json"
    metrics.write_bytes(metrics.read_bytes()[:500])
    with pytest.raises(
        StorageError, match=f"cannot read {re.escape(str(metrics))}: not valid JSON"
    ):
        resume(stopped_run)
    assert len(metrics.read_bytes()) == 500  # left as it was
    with pytest.raises(StorageError) as info:
        resume(stopped_run)
    assert info.value.exit_status == 4


def test_a_sweep_resumes_a_trial_whose_metrics_json_is_truncated(tmp_path):
    """The trial's train.py then names the file (exit 4); the sweep itself does not crash."""
    from src.experiments.runner import trial_action

    run_dir = tmp_path / "t"
    (run_dir / "model_last" / "30").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("x: 1\n")
    (run_dir / "metrics.json").write_text('{"status": "compl')
    assert trial_action(run_dir) == "resume"


# --- 6. A read-only workdir.


def test_a_read_only_workdir_is_exit_4_with_one_line(tmp_path, monkeypatch, capsys):
    """As `mount -o ro`: every write under the workdir fails with EROFS (tests run as root,
    whom permissions do not stop, so the file system calls are replaced)."""
    import errno

    from src.training.entry import main
    from src.utils.cli import run

    workdir = tmp_path / "ro"
    (workdir / "checkpoints").mkdir(parents=True)
    real_open, real_mkdir = os.open, os.mkdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def read_only(path: Any) -> None:
        if str(path).startswith(str(workdir)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def ro_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & writing:
            read_only(path)
        return real_open(path, flags, *args, **kwargs)

    def ro_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.path.exists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
        read_only(path)
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)
    assert run(main, cli_args(workdir, "ro")) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0] and "run ro" in err[0], err


# --- 4, 5. Corrupted or truncated checkpoints: checksums, one line, the documented status.


def data_files(step_dir: Path) -> list[Path]:
    """The array data files of an Orbax step, largest first."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def overwrite_1kb(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100:1124] = b"\x7f" * 1024
    path.write_bytes(bytes(data))


def truncate(step_dir: Path) -> None:
    (step_dir / "checksums.json").unlink()  # as if saved before checksums: Orbax must fail
    for path in data_files(step_dir):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_saved_steps_carry_checksums_of_their_files(stopped_run):
    from src.training.run.checkpoint import file_digests

    for step_dir in [stopped_run / "model_last" / "20", stopped_run / "model_last" / "30"]:
        listed = read_json(step_dir / "checksums.json")["sha256"]
        assert listed == file_digests(step_dir) and len(listed) >= 5


def test_a_corrupted_step_is_set_aside_and_resume_falls_back(stopped_run, capsys):
    overwrite_1kb(data_files(stopped_run / "model_last" / "30")[0])
    capsys.readouterr()
    assert resume(stopped_run) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "does not match its checksum" in err[0] and "resuming from step 20" in err[0]
    names = [p.name for p in (stopped_run / "model_last").iterdir()]
    assert any(n.startswith("30.corrupt-") for n in names)
    record = read_json(stopped_run / "metrics.json")
    assert record["status"] == "completed"
    train = [r["step"] for r in record["history"] if r["split"] == "train"]
    assert train == list(range(10, 89, 10)) + [88]  # steps 21-30 replayed once, not twice


def test_a_truncated_step_falls_back_with_one_warning_line(stopped_run, capsys):
    truncate(stopped_run / "model_last" / "30")
    capsys.readouterr()
    assert resume(stopped_run) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not read back" in err[0], err[:5]
    assert "resuming from step 20" in err[0]
    assert len(err[0].replace(str(stopped_run), "RUN")) < 250, err[0]


def test_a_truncated_only_checkpoint_is_exit_4_with_one_line(stopped_run, capsys):
    from src.training.entry import main
    from src.utils.cli import run

    shutil.rmtree(stopped_run / "model_last" / "20")
    truncate(stopped_run / "model_last" / "30")
    capsys.readouterr()
    args = [f"--workdir={stopped_run.parents[1]}", "--run_id=stopped", "--resume"]
    assert run(main, args) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint in" in err[0] and "reads back" in err[0], err[:5]
    assert len(err[0].replace(str(stopped_run), "RUN")) < 250, err[0]
    assert (stopped_run / "model_last" / "30").is_dir()  # nothing moved


@pytest.mark.parametrize("target", ["data", "state/_METADATA", "metadata without checksums"])
def test_evaluate_refuses_a_corrupted_checkpoint_with_exit_4(stopped_run, capsys, target):
    from src.evaluation.entry import main
    from src.utils.cli import run

    step = stopped_run / "model_best" / "20"
    if target == "data":
        overwrite_1kb(data_files(step)[0])
    else:
        metadata = bytearray((step / "state" / "_METADATA").read_bytes())
        metadata[50] ^= 0xFF
        (step / "state" / "_METADATA").write_bytes(bytes(metadata))
        if target == "metadata without checksums":
            (step / "checksums.json").unlink()
    capsys.readouterr()
    assert run(main, [f"--run_dir={stopped_run}", "--checkpoint=best", "--split=val"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    expected = "does not read back" if target.endswith("checksums") else "checksum"
    assert len(err) == 1 and "model_best/20" in err[0] and expected in err[0], err


# --- 7. A full disk: one line, and the record never claims a checkpoint that is not on disk.


def test_a_failed_best_save_is_not_claimed_by_the_record(tmp_path, monkeypatch, capsys):
    """model_best's save of step 40 fails in the background (as on a full disk): metrics.json
    must keep naming the best checkpoint that is on disk."""
    import orbax.checkpoint as ocp

    from src.training.entry import main
    from src.utils.cli import run

    lost: set[int] = set()
    save, wait = ocp.CheckpointManager.save, ocp.CheckpointManager.wait_until_finished

    def failing_save(self: Any, step: int, *args: Any, **kwargs: Any) -> bool:
        if Path(self.directory).name == "model_best" and step == 40:
            lost.add(id(self))  # "started"; its write fails later
            return True
        return save(self, step, *args, **kwargs)

    def failing_wait(self: Any) -> None:
        wait(self)
        if id(self) in lost:
            raise ValueError('RESOURCE_EXHAUSTED: Failed writing "x": No space left on device')

    monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", failing_wait)
    assert run(main, cli_args(tmp_path, "full")) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    run_dir = tmp_path / "checkpoints" / "full"
    record = read_json(run_dir / "metrics.json")
    on_disk = [int(p.name) for p in (run_dir / "model_best").iterdir() if p.name.isdigit()]
    assert record["status"] == "failed" and on_disk == [20]
    assert record["best"]["step"] == 20


def test_orbax_error_logs_about_a_full_disk_are_dropped(tmp_path, caplog):
    import logging

    from src.training.run.checkpoint import make_manager

    make_manager(tmp_path / "m", 1).close()
    absl = logging.getLogger("absl")
    with caplog.at_level(logging.ERROR):
        absl.error("_SignalingThread.run() raised: RESOURCE_EXHAUSTED: No space left on device")
        try:
            raise ValueError("commit failed") from OSError(28, "No space left on device")
        except ValueError:
            absl.exception("Failed to run 4 Handler Commit operations")
        absl.error("some other orbax error")
    assert [r.getMessage() for r in caplog.records] == ["some other orbax error"]


# --- 12. TensorBoard after a kill and a resume: exactly metrics.json's records, once each.


def test_tensorboard_equals_the_record_after_a_kill_and_resume(tmp_path):
    from tests.test_training import _recorder, _tensorboard_events

    first = _recorder(tmp_path, tensorboard=True, write_every_secs=0.0)
    for step in (10, 20, 30, 40):
        first.log(step, "train", {"loss": 1.0 / step})
        first.log(step, "val", {"elbo": -float(step)})
    first.save()
    # The kill: the events of steps 30 and 40 never reached the file, but metrics.json has them.
    # Resumed from a checkpoint at step 30, the run replays step 40.
    (events,) = (tmp_path / "logs").glob("events.out.tfevents.*")
    # tensorboardX writes from a background thread, and its flush() does not wait for the
    # events still queued; close() does: then all 8 records are in the file.
    first.close()
    written = _tensorboard_events(tmp_path / "logs")
    assert len(written) == 9
    kept = written[:5]  # file version + steps 10 and 20
    assert [e.step for e in kept[1:]] == [10, 10, 20, 20]
    events.write_bytes(b"".join(_encoded(e) for e in kept))
    resumed = _recorder(tmp_path, tensorboard=True, write_every_secs=0.0, resume=True)
    resumed.truncate(30)
    resumed.log(40, "train", {"loss": 1.0 / 40})
    resumed.log(40, "val", {"elbo": -40.0})
    resumed.close()
    shown = sorted(
        (e.step, v.tag, v.simple_value)
        for e in _tensorboard_events(tmp_path / "logs")
        if e.HasField("summary")
        for v in e.summary.value
    )
    history = read_json(tmp_path / "metrics.json")["history"]
    expected = sorted(
        (r["step"], f"{r['split']}/{k}", pytest.approx(v))
        for r in history
        for k, v in r.items()
        if k not in ("step", "split")
    )
    assert shown == expected and len(history) == 8


def _encoded(event: Any) -> bytes:
    """An Event as a TFRecord (length, its crc, data, its crc), as the event files hold it."""
    import struct

    from tensorboardX.crc32c import crc32c

    def masked(data: bytes) -> bytes:
        crc = crc32c(data)
        return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)

    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    return header + masked(header) + data + masked(data)


# --- 14. A signal to a sweep reaches its trials, which stop; the sweep waits and exits 128 + n.

FAKE_TRIAL = """
import json, os, pathlib, signal, sys, time
run = pathlib.Path(sys.argv[1])
run.mkdir(parents=True, exist_ok=True)
got = []
signal.signal(signal.SIGTERM, lambda n, f: got.append(n))
(run / "started").write_text(str(os.getpid()))
deadline = time.time() + 30
while not got and time.time() < deadline:
    time.sleep(0.02)
(run / "signals").write_text(str(len(got)))
(run / "metrics.json").write_text(json.dumps({"status": "interrupted" if got else "completed"}))
sys.exit(128 + got[0] if got else 0)
"""


def test_a_signal_to_a_sweep_stops_its_trials_and_waits_for_them(
    tmp_path, monkeypatch, default_handlers
):
    import threading
    import time

    from src.experiments import runner
    from src.experiments.spec import expand, load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nexperiment: {BASELINE}\nseeds: [1, 2, 3]\n")
    spec = load_sweep(path)
    trials = expand(spec)
    workdir = tmp_path / "w"

    def command(spec: Any, trial: Any, workdir: Path, action: str) -> list[str]:
        return [sys.executable, "-c", FAKE_TRIAL, str(run_paths(workdir, trial.run_id).run_dir)]

    monkeypatch.setattr(runner, "train_command", command)
    started = [run_paths(workdir, t.run_id).run_dir / "started" for t in trials[:2]]

    def stop_when_both_run() -> None:
        deadline = time.monotonic() + 60
        while not all(p.exists() for p in started) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_both_run, daemon=True).start()
    outcomes = runner.run_trials(spec, trials, workdir, [{}, {}], lambda o: None)
    assert runner.stopped_by() == signal.SIGTERM and default_handlers == []
    for trial in trials[:2]:  # ran, got the signal once, saved and stopped
        run_dir = run_paths(workdir, trial.run_id).run_dir
        assert (run_dir / "signals").read_text() == "1"
        assert outcomes[trial.run_id].status == "interrupted"
        assert outcomes[trial.run_id].error.startswith(f"exit {128 + signal.SIGTERM}")
    queued = outcomes[trials[2].run_id]
    assert (queued.action, queued.status) == ("skipped", "interrupted")
    assert not run_paths(workdir, trials[2].run_id).run_dir.exists()


@pytest.mark.slow
def test_sigterm_to_sweep_py_stops_its_trials_and_a_rerun_resumes_them(tmp_path):
    import time

    import yaml

    from src.experiments.spec import expand, load_sweep
    from src.training.run.rundir import holder
    from src.utils.config import parse_override
    from tests.helpers import run_script, script_env

    overrides = {**dict(parse_override(o) for o in TINY), "training.epochs": 3}
    body = {"name": "sig", "experiment": str(BASELINE), "overrides": overrides, "seeds": [1, 2]}
    sweep = tmp_path / "sig.yaml"
    sweep.write_text(yaml.safe_dump(body))
    work = tmp_path / "work"
    args = [f"--config={sweep}", f"--workdir={work}", "--workers=2", "--devices=none"]
    trials = expand(load_sweep(sweep))
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "sweep.py"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        env=script_env(),
    )
    lasts = [work / "checkpoints" / t.run_id / "model_last" for t in trials]
    deadline = time.monotonic() + 240
    while not all(d.is_dir() and any(p.name.isdigit() for p in d.iterdir()) for d in lasts):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    for trial in trials:  # stopped and saved; no orphan holds the run
        paths = run_paths(work, trial.run_id)
        assert holder(paths) is None
        assert read_json(paths.metrics)["status"] == "interrupted"
    again = run_script("sweep.py", *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("(resumed") == 2
    for trial in trials:
        assert read_json(run_paths(work, trial.run_id).metrics)["status"] == "completed"


def test_checksums_follow_a_finished_save_at_the_next_boundary(tmp_path, monkeypatch):
    """Not only at the next save: a kill in between would leave the newest step unchecked."""
    import time

    from src.training.entry import main

    checksums = tmp_path / "checkpoints" / "c" / "model_last" / "20" / "checksums.json"
    seen: list[bool] = []
    at_batch(monkeypatch, 25, lambda: time.sleep(1.0))
    at_batch(monkeypatch, 35, lambda: seen.append(checksums.is_file()))
    assert main(cli_args(tmp_path, "c", "--config.checkpoint.keep_last=3")) == 0
    assert seen == [True]  # after the boundary at step 30, before the save at step 40
