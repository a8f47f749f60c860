"""Signals: SIGTERM, SIGINT and SIGHUP (a closed terminal) stop a run gracefully, at any moment.

Two handlers share the work:

- CommandGuard, installed by the train command (src/training/entry.py) for its whole duration.
  Before the training loop has started, a signal raises Interrupted (a BaseException, so no
  `except Exception` swallows it): nothing has been trained, the command undoes what it
  prepared (an --overwrite'n run comes back) and exits 128 + signal number. After the loop, a
  signal is noted and ignored: the run has ended and its record says how. Once the command has
  its exit status, run as a script, the signals are ignored (SIG_IGN, which the interpreter's
  shutdown keeps, unlike a Python handler) until the process has exited with that status, so
  the exit status and the record always agree.
- StopRequest, around the loop. The first signal asks the loop to stop: it polls
  StopRequest.signum after each step, saves model_last and records the run as interrupted. A
  second signal ends the process at once with os._exit: every file the run has written is
  replaced atomically (metrics.json by rename, Orbax steps by renaming a temporary folder), so
  an exit at any instant leaves the previous complete files, and the next start deletes Orbax's
  unfinished temporary folders.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Interrupted(BaseException):
    """A signal that arrived before training started."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _install(handler: Any) -> dict[int, Any]:
    """Installs handler for SIGNALS (main thread only); returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in SIGNALS}


def _restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


class CommandGuard:
    """Context manager for a whole command; see the module docstring."""

    def __init__(self, keep: bool):
        self.keep = keep  # leave the handler installed on exit (the process ends next)
        self.phase = "before"  # before | loop | after (set by StopRequest)
        self.late: int | None = None  # a signal noted after the loop
        self.status: int | None = None  # the command's exit status, once known
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.status is not None:  # the command has ended: exit as it would
            _flush()
            os._exit(self.status)
        if self.phase == "before":
            raise Interrupted(signum)
        self.late = signum  # noted only: printing here could re-enter a print in progress

    def finish(self, status: int) -> int:
        """Records the command's exit status: a later signal exits with it, and run as a script
        (keep) the signals are ignored from here until the process has exited."""
        self.status = status
        if self.keep:
            _install(signal.SIG_IGN)
        return status

    def __enter__(self) -> CommandGuard:
        self._previous = _install(self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.keep:
            _restore(self._previous)


def _guard_of(handler: Any) -> CommandGuard | None:
    owner = getattr(handler, "__self__", None)
    return owner if isinstance(owner, CommandGuard) else None


class StopRequest:
    """Context manager that installs the handlers and restores the previous ones on exit.

    Outside the main thread (where Python cannot install handlers) it installs nothing and
    signum stays None.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            print(
                f"{signal.Signals(signum).name}: finishing the current step and saving "
                "model_last (send it again to exit at once)",
                file=sys.stderr,
                flush=True,
            )
            return
        print(
            f"second signal ({signal.Signals(signum).name}): exiting now; saved files stay complete",
            file=sys.stderr,
            flush=True,
        )
        _flush()
        os._exit(128 + signum)

    def _guards(self) -> set[CommandGuard]:
        return {g for g in map(_guard_of, self._previous.values()) if g is not None}

    def __enter__(self) -> StopRequest:
        self._previous = _install(self._handle)
        for guard in self._guards():
            guard.phase = "loop"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for guard in self._guards():
            guard.phase = "after"
        _restore(self._previous)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None
