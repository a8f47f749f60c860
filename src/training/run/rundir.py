"""Run ids, the layout of a run's folders under the workdir, and who may write them.

One writer per run: `lock_run` takes an exclusive fcntl.flock on `checkpoints/.<run_id>.lock`
(next to the run folder, not inside it, so that --overwrite can move the folder aside while
holding the lock). The kernel releases it when the process ends, however it ends, so a killed
run never leaves it stuck. The file holds the PID of the last holder, for the error message.

--overwrite never deletes before the new run has started: `prepare` renames the old folders to
`.<run_id>.replaced` siblings and returns a Replacement. The loop calls its `commit()` once every
check has passed and training starts (the old folders are then renamed to `.<run_id>.deleted`
and removed); `restore()` puts them back if the new run fails before that. A process killed in
between leaves the `.replaced` folders: the next `prepare` of that run id (under the lock, so
their owner is dead) restores them, or finishes deleting them if the run folder's own one was
already committed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

from src.utils.errors import RunDirError, StorageError

RUN_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
# File names are limited to 255 bytes; the longest name derived from a run id is
# `.<run_id>.replaced` (10 more), and a margin is left for the tools that add suffixes.
MAX_RUN_ID_CHARS = 200
REPLACED = ".replaced"
DELETED = ".deleted"


class RunPaths(NamedTuple):
    run_dir: Path  # <workdir>/checkpoints/<run_id>
    log_dir: Path  # <workdir>/logs/<run_id>
    figure_dir: Path  # <workdir>/figures/<run_id>

    @property
    def last(self) -> Path:
        return self.run_dir / "model_last"

    @property
    def best(self) -> Path:
        return self.run_dir / "model_best"

    @property
    def config(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.json"

    @property
    def provenance(self) -> Path:
        return self.run_dir / "provenance.json"

    @property
    def lock(self) -> Path:
        return self.run_dir.with_name(f".{self.run_dir.name}.lock")


def default_run_id(experiment: str) -> str:
    return f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_paths(workdir: str | Path, run_id: str) -> RunPaths:
    """Checks run_id (letters, digits, '-', '_', '.'; never '.' or '..'; at most
    MAX_RUN_ID_CHARS) and returns its folders."""
    if not RUN_ID.match(run_id) or set(run_id) == {"."}:
        raise RunDirError(
            f"--run_id {run_id!r}: use only letters, digits, '-', '_' and '.', e.g. baseline-s42"
        )
    if len(run_id) > MAX_RUN_ID_CHARS:
        raise RunDirError(
            f"--run_id {run_id[:20]}...: {len(run_id)} characters; at most {MAX_RUN_ID_CHARS} "
            "(file names are limited to 255 bytes)"
        )
    root = Path(workdir)
    return RunPaths(
        root / "checkpoints" / run_id, root / "logs" / run_id, root / "figures" / run_id
    )


def _aside(folder: Path, suffix: str) -> Path:
    return folder.with_name(f".{folder.name}{suffix}")


def storage_error(what: str, e: OSError) -> StorageError:
    """One line naming the file and the OS's reason (read-only, full, permissions)."""
    reason = e.strerror or str(e)
    return StorageError(f"cannot {what}: {reason} ({e.filename or ''}); fix the disk or --workdir")


class RunLock:
    """An exclusive flock on paths.lock, held until release() or the end of the process."""

    def __init__(self, paths: RunPaths):
        self.path = paths.lock
        run = paths.run_dir.name
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise storage_error(f"create the lock of run {run}", e) from e
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            self.fd = None
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise storage_error(f"lock run {run}", e) from e
            raise RunDirError(
                f"run {run} is in use by process {holder} (lock {self.path}); wait for it to "
                "end or stop it, then try again"
            ) from None
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the PID is only shown to a second writer; the lock itself is held

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run(paths: RunPaths) -> RunLock:
    """Takes the run's writer lock; RunDirError (exit 2) naming the holder's PID if taken."""
    return RunLock(paths)


def holder(paths: RunPaths) -> str | None:
    """The PID holding the run's lock, or None when nobody does (checked by trying it)."""
    if not paths.lock.is_file():
        return None
    try:
        fd = os.open(paths.lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)  # also releases the lock if it was taken
    return None


class Replacement:
    """The old folders of a run being overwritten, set aside until the new run starts."""

    def __init__(self, moved: list[tuple[Path, Path]]):
        self.moved = moved  # (folder, aside); the run folder first

    def commit(self) -> None:
        """The new run has started: the old folders go (the run folder's rename is the commit
        point; the others follow)."""
        from src.training.run import run_index

        moved, self.moved = self.moved, []
        for folder, aside in moved:
            trash = _aside(folder, DELETED)
            shutil.rmtree(trash, ignore_errors=True)
            aside.rename(trash)
            if folder == moved[0][0]:  # runs.csv stops listing the deleted run
                run_index.record_replaced(folder)
            shutil.rmtree(trash, ignore_errors=True)

    def restore(self) -> None:
        """The new run did not start: its folders go and the old ones come back."""
        moved, self.moved = self.moved, []
        for folder, aside in reversed(moved):
            shutil.rmtree(folder, ignore_errors=True)
            aside.rename(folder)


def recover(paths: RunPaths) -> None:
    """Finishes what a killed --overwrite left (call it holding the lock): restores the old run
    if the new one never started, else removes the rest of the old one."""
    for folder in paths:
        shutil.rmtree(_aside(folder, DELETED), ignore_errors=True)
    committed = not _aside(paths.run_dir, REPLACED).exists()
    for folder in paths:
        aside = _aside(folder, REPLACED)
        if not aside.exists():
            continue
        if committed:
            shutil.rmtree(aside, ignore_errors=True)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        aside.rename(folder)
        if folder == paths.run_dir:
            print(
                f"warning: run {folder.name}: an --overwrite ended before the new run started; "
                "the old run is restored",
                file=sys.stderr,
            )


def prepare(paths: RunPaths, resume: bool, overwrite: bool) -> Replacement:
    """Creates the run folders; refuses to reuse an existing run unless resuming or overwriting.

    With overwrite, the existing folders are set aside, not deleted: call the returned
    Replacement's commit() once the new run has started, restore() if it fails before.
    """
    try:
        return _prepare(paths, resume, overwrite)
    except OSError as e:
        raise storage_error(f"prepare run folder {paths.run_dir}", e) from e


def _prepare(paths: RunPaths, resume: bool, overwrite: bool) -> Replacement:
    recover(paths)
    exists = paths.run_dir.exists() and any(paths.run_dir.iterdir())
    if resume and not paths.config.is_file():
        raise RunDirError(f"--resume: no run to resume at {paths.run_dir} (no config.yaml)")
    moved: list[tuple[Path, Path]] = []
    if exists and not resume:
        if not overwrite:
            raise RunDirError(
                f"run directory {paths.run_dir} already exists; pass --resume to continue it "
                "or --overwrite to replace it"
            )
        for folder in paths:
            if folder.exists():
                aside = _aside(folder, REPLACED)
                folder.rename(aside)
                moved.append((folder, aside))
    if resume:  # temporary files of atomic writes that a hard exit cut short
        for stale in paths.run_dir.glob(".*.tmp"):
            stale.unlink()
    replacement = Replacement(moved)
    try:
        for folder in paths:
            folder.mkdir(parents=True, exist_ok=True)
    except BaseException:
        replacement.restore()
        raise
    return replacement
