"""Atomic file writes (a reader sees either the old complete file or the new one) and console
streams that never raise.

Hand-written: a temporary file in the same folder, fsync and os.replace is all an atomic write
takes; no dependency does it with less.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from src.utils.errors import StorageError


def atomic_write_text(path: Path, text: str) -> None:
    """Writes text to a temporary file in the same folder, fsyncs it, then renames it over path."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes data to a temporary file in the same folder, fsyncs it, then renames it over path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide it from others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status); elsewhere set
    and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def read_json(path: Path) -> Any:
    """The JSON value in path; a file that is not complete JSON (cut short by a full disk or a
    crash outside our atomic writes, or edited by hand) is a StorageError (exit 4) naming it."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:  # unreadable: permissions, or a folder in its place
        raise StorageError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise StorageError(
            f"cannot read {path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}; "
            f"{len(text)} characters); restore it or start the run again with --overwrite"
        ) from None


class GuardedStream:
    """A text stream whose write and flush never raise: console output is never worth a run.

    From the first OSError (the reader of a pipe has gone, as with `| head`; the terminal has
    hung up) its file descriptor is pointed at /dev/null, so later writes by Python, by the
    interpreter's final flush and by C++ libraries writing to the descriptor all succeed.
    """

    def __init__(self, stream: Any):
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return int(self.stream.write(text))
            except OSError:
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except OSError:
                self._silence()

    def _silence(self) -> None:
        self.broken = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.stream.fileno())
            finally:
                os.close(devnull)
            self.stream.flush()  # what the failed write left in the buffer goes nowhere now
        except (OSError, ValueError, AttributeError):  # no descriptor (a test's StringIO)
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def guarded_console() -> Iterator[None]:
    """sys.stdout and sys.stderr as GuardedStreams for the duration (nesting is harmless)."""
    saved = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, GuardedStream):
        sys.stdout = GuardedStream(sys.stdout)
    if not isinstance(sys.stderr, GuardedStream):
        sys.stderr = GuardedStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
