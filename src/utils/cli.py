"""Command-line helpers shared by the scripts: --config.KEY=VALUE overrides and exit statuses.

Exit statuses: 0 done; 1 a bug (traceback); 2 a mistake in the input (USER_ERROR_STATUS);
3 training stopped on a non-finite loss or gradient (NONFINITE_STATUS); 4 a checkpoint or record
file could not be written or read (StorageError); 128 + signal number when SIGINT (130) or
SIGTERM (143) interrupted a run after saving it.

argparse, not absl flags with ml_collections' config_flags: those override a Python config
file, while ours are YAML files composed and validated by src/utils/config.py.
"""

from __future__ import annotations

import argparse
import difflib
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

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


SCHEMA_FILE = "configs/default.yaml"


def _wrap(text: str, hanging: int = 0) -> list[str]:
    """text wrapped to 92 columns, indented 8 spaces, continuation lines `hanging` more."""
    return textwrap.wrap(
        text, width=92, initial_indent=" " * 8, subsequent_indent=" " * (8 + hanging)
    )


def overrides_help(
    scope: str,
    examples: Sequence[str],
    listing: str = "",
    form: str = "--config.SECTION.KEY=VALUE",
) -> str:
    """The --help paragraph on --config.KEY=VALUE overrides: what they set (scope, e.g.
    "any config key"), how VALUE is read, examples, a listing of the sections or keys allowed
    (if given) and where the keys are documented."""
    lines = ["config overrides:", f"  {form}"]
    lines += _wrap(
        f"Set {scope}; repeatable, applied after the YAML files. VALUE is read as YAML and "
        "must have the key's type (3e-4, 32, true, [512,256], a string), e.g."
    )
    lines += [f"          {example}" for example in examples]
    if listing:
        lines += _wrap(listing, hanging=2)
    lines += _wrap(f"Every key, its default and meaning: {SCHEMA_FILE}.")
    return "\n".join(lines)


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-line texts (descriptions, flag help) as argparse does; a text of several lines
    (an epilog with examples) is laid out by hand and kept as it is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad flags as a one-line UserError (status 2) and keeps the line
    breaks of a hand-written epilog (HelpFormatter)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            message += self.flag_hint(message[len(prefix) :].split())
        raise UserError(f"{self.prog}: {message}")

    def flag_hint(self, unknown: Sequence[str]) -> str:
        """'; did you mean --run_id?' for a misspelt flag (--run-id, --runid, --rn_id), as
        unknown config keys get; '' when no flag is close."""
        flags = [f for f in self._option_string_actions if f.startswith("--")]
        close = []
        for arg in unknown:
            name = arg.split("=", 1)[0]
            if not name.startswith("--"):
                continue
            key = name.replace("-", "_")
            match = [f for f in flags if f.replace("-", "_") == key]
            match = match or difflib.get_close_matches(name, flags, n=1, cutoff=0.7)
            close += [m for m in match if m not in close]
        return f"; did you mean {' or '.join(close)}?" if close else ""


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
    except Exception as e:
        if not out_of_device_memory(e):
            raise
        print(
            f"error: out of device memory ({_first_line(e)}); lower training.batch_size "
            "(train.py), eval.batch_size or eval.iwae_chunk (evaluate.py), or the model's size",
            file=sys.stderr,
        )
        return USER_ERROR_STATUS
    except KeyboardInterrupt:
        print("interrupted (SIGINT)", file=sys.stderr)
        return 128 + signal.SIGINT


def out_of_device_memory(e: BaseException) -> bool:
    """An XLA allocation failure: JAX's runtime error with RESOURCE_EXHAUSTED (the config asks
    for more device memory than there is), told apart from a bug by its status code."""
    return type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and str(e).startswith(
        "RESOURCE_EXHAUSTED"
    )


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "..."
