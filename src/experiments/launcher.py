"""A sweep's `launcher:` section: the SLURM settings of its trials, validated and overridden.

configs/launcher/slurm.yaml is the schema: every key with its default and a comment. A sweep
file's `launcher:` mapping overrides those defaults and `--launcher.KEY=VALUE` flags override
both (VALUE is read as YAML, as `--config.KEY=VALUE` is). A key the schema lacks or a value of
another type than its default is a ConfigError naming the file or flag (exit status 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from src.utils.config import CONFIG_ROOT, read_yaml
from src.utils.errors import ConfigError

SCHEMA = CONFIG_ROOT / "launcher" / "slurm.yaml"
FLAG = "--launcher."
# Keys that must be >= 1; every other integer key must be >= 0.
AT_LEAST_ONE = ("time_min", "cpus_per_task", "tasks_per_trial", "nodes_per_trial", "poll_s")


class SlurmSettings(NamedTuple):
    partition: str
    time_min: int
    cpus_per_task: int
    gpus_per_task: int
    mem_gb: int
    array_parallelism: int
    tasks_per_trial: int
    nodes_per_trial: int
    signal_delay_s: int
    max_requeues: int
    sbatch: dict[str, Any]
    setup: list[str]
    poll_s: int


def defaults() -> dict[str, Any]:
    data = read_yaml(SCHEMA)
    assert list(data) == list(SlurmSettings._fields), f"{SCHEMA} and SlurmSettings differ"
    return data


def _check(where: str, key: str, value: Any, default: Any) -> Any:
    """value if it has the type of default (and a sane range); a ConfigError otherwise."""
    kind = type(default)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if ok and kind is list:
        ok = all(isinstance(line, str) for line in value)
    if ok and kind is dict:
        ok = all(isinstance(k, str) and not isinstance(v, list | dict) for k, v in value.items())
    if not ok:
        what = {
            int: "an integer",
            str: "a string",
            list: "a list of shell lines",
            dict: "a mapping option: value",
        }[kind]
        raise ConfigError(f"{where}: {key} must be {what}, got {value!r}")
    if kind is int and value < (1 if key in AT_LEAST_ONE else 0):
        bound = ">= 1" if key in AT_LEAST_ONE else ">= 0"
        raise ConfigError(f"{where}: {key} must be {bound}, got {value}")
    return value


def _merge(where: str, settings: dict[str, Any], raw: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(settings)
    for key, value in raw.items():
        if key not in out:
            raise ConfigError(
                f"{where}: unknown launcher key {key!r}; allowed: {', '.join(out)} ({SCHEMA.name})"
            )
        out[key] = _check(where, key, value, settings[key])
    return out


def _finish(where: str, values: dict[str, Any]) -> SlurmSettings:
    settings = SlurmSettings(**values)
    if settings.tasks_per_trial % settings.nodes_per_trial:
        raise ConfigError(
            f"{where}: tasks_per_trial ({settings.tasks_per_trial}) must be a multiple of "
            f"nodes_per_trial ({settings.nodes_per_trial})"
        )
    return settings


def check_section(path: Path, raw: Any) -> dict[str, Any]:
    """A sweep file's `launcher:` value, validated against the schema; returned as given."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: launcher must be a mapping of SLURM settings, got {raw!r}")
    _finish(f"{path}: launcher", _merge(f"{path}: launcher", defaults(), raw))
    return dict(raw)


def split_flags(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Separates '--launcher.KEY=VALUE' from the other arguments: (rest, {KEY: value})."""
    rest: list[str] = []
    flags: dict[str, Any] = {}
    for arg in argv:
        if not arg.startswith(FLAG):
            rest.append(arg)
            continue
        key, eq, text = arg[len(FLAG) :].partition("=")
        if not eq:
            raise ConfigError(f"{arg}: expected {FLAG}KEY=VALUE")
        try:
            flags[key] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            raise ConfigError(f"{arg}: {text!r} does not read as a YAML value") from None
    return rest, flags


def settings(path: Path, section: Mapping[str, Any], flags: Mapping[str, Any]) -> SlurmSettings:
    """The schema's defaults, then the sweep file's section, then the command line's flags."""
    values = _merge(f"{path}: launcher", defaults(), section)
    for key, value in flags.items():
        values = _merge(f"{FLAG}{key}", values, {key: value})
    return _finish(f"{path}: launcher (with the {FLAG}KEY flags)", values)
