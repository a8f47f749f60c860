"""Command-line helpers shared by the scripts: --config.KEY=VALUE overrides and exit statuses.

Exit statuses: 0 done; 1 a bug (traceback); 2 a mistake in the input (USER_ERROR_STATUS);
3 training stopped on a non-finite loss or gradient (NONFINITE_STATUS); 4 a checkpoint or record
file could not be written or read (StorageError); 128 + signal number when SIGINT (130) or
SIGTERM (143) interrupted a run after saving it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from src.utils.errors import RunError, UserError

USER_ERROR_STATUS = 2
NONFINITE_STATUS = 3


def interrupted_status(signum: int) -> int:
    """The shell's convention for a process ended by signal signum."""
    return 128 + signum


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates '--config.a.b=v' (or '--config.a.b v') from the other arguments.

    Returns (remaining argv, ['a.b=v', ...]).
    """
    rest: list[str] = []
    overrides: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--config."):
            body = arg[len("--config.") :]
            if "=" not in body:
                if i + 1 >= len(args):
                    raise UserError(f"{arg}: missing value (use {arg}=VALUE)")
                body, i = f"{body}={args[i + 1]}", i + 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad flags as a one-line UserError (status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def run(main: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None) -> int:
    """Calls main; a UserError becomes one line on stderr and status 2, a RunError one line and
    its exit_status; bugs keep their traceback."""
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_STATUS
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_status
