"""The run identity: `<run_dir>/run.json`, written once when a run is created.

It holds a random id (`run`) and the config the run trains with (`config`, rewritten when a
resume changes a key the command line may change). Every checkpoint step carries the id in its
checksums.json and meta (src/utils/checkpoint.py), every evaluation record names it, so a
run's files are known to be its own rather than trusted because of where they lie:

- config.yaml must equal `config`: a hand edit is refused on resume and evaluate (exit 2,
  naming the keys); the command line's resume overrides stay the way to change a key.
- a step saved by another run (copied in) is refused like a corrupted one (exit 4).
- an evaluation record is written only into the run it read.

A run made before run.json existed (a legacy run) has none: it is accepted unchecked with a
one-line notice; --resume gives it an identity (`legacy: true`, so its older steps, which carry
none, stay accepted).
"""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from src.utils.config import changed_keys, read_yaml, to_plain
from src.utils.errors import ConfigError, StorageError
from src.utils.io import atomic_write_json, read_json

FILE_NAME = "run.json"


class Identity(NamedTuple):
    """A run's identity; run None for a legacy run without run.json."""

    run: str | None
    legacy: bool = False
    config: dict[str, Any] | None = None


LEGACY = Identity(None, legacy=True)


def path_of(run_dir: Path) -> Path:
    return run_dir / FILE_NAME


def read(run_dir: Path) -> Identity:
    """run_dir's identity; LEGACY without run.json; StorageError (exit 4) if unreadable."""
    path = path_of(run_dir)
    if not path.is_file():
        return LEGACY
    try:
        data = read_json(path)
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror or e}") from None
    if not (
        isinstance(data, dict)
        and isinstance(data.get("run"), str)
        and isinstance(data.get("config"), dict)
    ):
        raise StorageError(
            f"{path}: not a run identity (an object with 'run' and 'config'); restore it from a "
            "copy of the run"
        )
    return Identity(data["run"], bool(data.get("legacy", False)), data["config"])


def write(run_dir: Path, identity: Identity, cfg: Any) -> Identity:
    """Writes run.json with identity's id and cfg as the run's config; returns the new identity."""
    new = Identity(identity.run or uuid.uuid4().hex, identity.legacy, to_plain(cfg))
    data = {
        "run": new.run,
        "legacy": new.legacy,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": new.config,
    }
    atomic_write_json(path_of(run_dir), data)
    return new


def create(run_dir: Path, cfg: Any) -> Identity:
    """A new run's identity (a random id), written to run.json."""
    return write(run_dir, Identity(None), cfg)


def adopt(run_dir: Path, cfg: Any) -> Identity:
    """An identity for a legacy run being resumed; its earlier steps carry none."""
    return write(run_dir, Identity(None, legacy=True), cfg)


def legacy_notice(run_dir: Path, what: str) -> None:
    print(
        f"notice: run {run_dir.name} has no {FILE_NAME} (made by an older version): its "
        f"config.yaml and checkpoints are {what} unchecked",
        file=sys.stderr,
    )


def check_config(run_dir: Path, identity: Identity) -> None:
    """Refuses a config.yaml that differs from the config recorded in run.json (a hand edit):
    ConfigError (exit 2) naming the file and the keys. Nothing to check for a legacy run."""
    if identity.config is None:
        return
    path = run_dir / "config.yaml"
    changed = changed_keys(identity.config, read_yaml(path))
    if changed:
        shown = ", ".join(
            f"{k} (recorded {a!r}, config.yaml {b!r})" for k, (a, b) in list(changed.items())[:5]
        )
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise ConfigError(
            f"{path} differs from the config the run trained with ({path_of(run_dir).name}): "
            f"{shown}{more}; undo the edit (a resume changes training.epochs and the other "
            "resumable keys with --config.KEY=VALUE), or start a new run with the new config"
        )
