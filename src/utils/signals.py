"""Graceful stop on SIGTERM/SIGINT: the first signal asks the loop to stop, a second one exits now.

The loop polls StopRequest.signum after each step, saves model_last and records the run as
interrupted. A second signal ends the process at once with os._exit: every file the run has
written is replaced atomically (metrics.json by rename, Orbax steps by renaming a temporary
folder), so an exit at any instant leaves the previous complete files, and the next start
deletes Orbax's unfinished temporary folders.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
        os._exit(128 + signum)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None
