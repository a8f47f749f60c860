"""Command-line helpers shared by the scripts: --config.KEY=VALUE overrides and exit statuses."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from src.utils.errors import UserError

USER_ERROR_STATUS = 2


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
    """Calls main; a UserError becomes one line on stderr and status 2, bugs keep their traceback."""
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_STATUS
