"""The run identity: provenance.json's `identity`, written when a run is created.

It holds a random id (`run`) and the config the run trains with (`config`, rewritten when a
resume changes a key the command line may change). Every checkpoint step carries the id in its
checksums.json and meta (src/training/run/checkpoint.py), every evaluation record names it, so a
run's files are known to be its own rather than trusted because of where they lie:

- config.yaml must equal `config`: a hand edit is refused on resume and evaluate (exit 2,
  naming the keys); the command line's resume overrides stay the way to change a key.
- a step saved by another run (copied in) is refused like a corrupted one (exit 4).
- an evaluation record is written only into the run it read.

A run made before identities existed (a legacy run: provenance.json without `identity`) is
accepted unchecked with a one-line notice; --resume gives it an identity (`legacy: true`, so
its older steps, which carry none, stay accepted).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any, NamedTuple

from src.utils.config import changed_keys, read_yaml, to_plain
from src.utils.errors import ConfigError, StorageError
from src.utils.io import read_json

FILE_NAME = "provenance.json"
KEY = "identity"


class Identity(NamedTuple):
    """A run's identity; run None for a legacy run (or one not checked)."""

    run: str | None
    legacy: bool = False
    config: dict[str, Any] | None = None

    def with_config(self, cfg: Any) -> Identity:
        return self._replace(config=to_plain(cfg))

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "legacy": self.legacy, "config": self.config}


LEGACY = Identity(None, legacy=True)


def new(cfg: Any) -> Identity:
    """A new run's identity: a random id and its config."""
    return Identity(uuid.uuid4().hex, False, to_plain(cfg))


def adopt(cfg: Any) -> Identity:
    """An identity for a legacy run being resumed; its earlier steps carry none."""
    return Identity(uuid.uuid4().hex, True, to_plain(cfg))


def for_run(cfg: Any, run_dir: Path, resume: bool, writer: bool) -> Identity:
    """The identity the run trains under: new with a new run, read on resume (a legacy run
    adopts one). Processes other than the writer check nothing."""
    if not writer:
        return read(run_dir) if resume else Identity(None)
    if not resume:
        return new(cfg)
    ident = read(run_dir)
    return adopt(cfg) if ident.run is None else ident


def read_provenance(path: Path) -> dict[str, Any]:
    """provenance.json's object; missing, unreadable or not an object: StorageError (exit 4)."""
    if not path.is_file():
        raise StorageError(
            f"{path} is missing (it holds the run's identity); restore it from a copy of the run"
        )
    try:
        data = read_json(path)
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise StorageError(
            f"{path}: not a provenance record (a JSON object); restore it from a copy of the run"
        )
    return data


def read(run_dir: Path) -> Identity:
    """run_dir's identity; LEGACY for a provenance.json without one."""
    path = run_dir / FILE_NAME
    found = read_provenance(path).get(KEY)
    if found is None:
        return LEGACY
    if not (
        isinstance(found, dict)
        and isinstance(found.get("run"), str)
        and isinstance(found.get("config"), dict)
    ):
        raise StorageError(
            f"{path}: its identity is not an object with 'run' and 'config'; restore the file "
            "from a copy of the run"
        )
    return Identity(found["run"], bool(found.get("legacy", False)), found["config"])


def legacy_notice(run_dir: Path, what: str) -> None:
    print(
        f"notice: run {run_dir.name} has no run identity (made by an older version): its "
        f"config.yaml and checkpoints are {what} unchecked",
        file=sys.stderr,
    )


def check_config(run_dir: Path, identity: Identity, resumable: Collection[str] = ()) -> None:
    """Refuses a config.yaml that differs from the config recorded with the identity (a hand
    edit): ConfigError (exit 2) naming the file and the keys. Nothing to check for a legacy run.

    Differences in `resumable` keys only (those a resume may change) are what a resume killed
    between writing config.yaml and provenance.json leaves; they are accepted, and that resume's
    successor records them."""
    if identity.config is None:
        return
    path = run_dir / "config.yaml"
    changed = changed_keys(identity.config, read_yaml(path))
    if changed and not set(changed) <= set(resumable):
        shown = ", ".join(
            f"{k} (recorded {a!r}, config.yaml {b!r})" for k, (a, b) in list(changed.items())[:5]
        )
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise ConfigError(
            f"{path} differs from the config the run trained with (recorded in {FILE_NAME}): "
            f"{shown}{more}; undo the edit (a resume changes training.epochs and the other "
            "resumable keys with --config.KEY=VALUE), or start a new run with the new config"
        )


def data_digests(info: dict[str, Any]) -> dict[str, str]:
    """The SHA-256 of each data file in a data description (provenance.json's `data`, or a
    loaded source's info): npz `path`; IDX `dir` and `files`. Empty for generated data."""
    if "path" in info and "sha256" in info:
        return {str(info["path"]): str(info["sha256"])}
    files = info.get("files")
    if "dir" in info and isinstance(files, dict):
        return {
            str(Path(info["dir"]) / name): str(facts.get("sha256"))
            for name, facts in files.items()
            if isinstance(facts, dict)
        }
    return {}


def pinned_data(cfg: Any, recorded: dict[str, Any] | None) -> Any:
    """cfg with its data location as resolved when the run was created (provenance.json's
    absolute `path` / `dir`), so resuming or evaluating from another directory reads the same
    files, not others with the same relative name. cfg itself when nothing was recorded."""
    if not recorded:
        return cfg
    from src.utils.config import freeze

    tree = to_plain(cfg)
    if cfg.data.name == "npz" and "path" in recorded:
        tree["data"]["npz"]["path"] = str(recorded["path"])
    elif "dir" in recorded and "files" in recorded:
        tree["data"]["dir"] = str(recorded["dir"])
    else:
        return cfg
    return freeze(tree)


def check_data(run_dir: Path, recorded: dict[str, Any] | None, loaded: dict[str, Any]) -> None:
    """Refuses data files whose SHA-256 differs from the one recorded when the run was created
    (DataError, exit 2, naming the file)."""
    from src.utils.errors import DataError

    before = data_digests(recorded or {})
    now = data_digests(loaded)
    for path, digest in before.items():
        if path in now and now[path] != digest:
            raise DataError(
                f"{path} differs from the data run {run_dir.name} trained on (SHA-256 "
                f"{now[path][:12]}..., recorded {digest[:12]}...); restore that file or start a "
                "new run"
            )


def recorded_data(run_dir: Path) -> dict[str, Any] | None:
    """provenance.json's `data` (the data as resolved at creation), None if absent."""
    found = read_provenance(run_dir / FILE_NAME).get("data")
    return found if isinstance(found, dict) else None
