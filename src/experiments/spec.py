"""Sweep files (configs/sweep/*.yaml) -> a validated SweepSpec -> the list of trials.

A trial is one ordinary training run: the sweep's base experiment plus `--config.KEY=VALUE`
overrides. Expansion is pure (no clock, no files beyond the sweep and schema), so the same
sweep file always yields the same trials and the same run ids, which is what makes a sweep
resumable.

Trials = grid points x random samples x seeds, where an absent part contributes one empty
point. With `combine: product` the grid is the Cartesian product of its lists; with `zip`
the i-th values of every list form the i-th point.

Hand-written rather than a sweep library (wandb/optuna sweeps, hydra's multirun): trials are
plain train.py runs with deterministic ids, validated against the same default.yaml schema as
a run's config, with no service or launcher to run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from src.training.run.rundir import RUN_ID
from src.utils.config import CONFIG_ROOT, deep_merge, nest, read_yaml, unknown_key_hint
from src.utils.errors import ConfigError

REPO_ROOT = CONFIG_ROOT.parent
SWEEP_KEYS = ("name", "experiment", "overrides", "grid", "combine", "random", "seeds", "metric")
COMBINE = ("product", "zip")
RANDOM_KEYS = ("seed", "trials", "params")
# Summary columns a sweep may plot; summary.RESULT_COLUMNS is built from these.
METRICS = (
    "best_value",
    "val_elbo",
    "val_recon",
    "val_kl",
    "val_active_units",
    "train_loss",
    "wall_s",
)
SEED_KEY = "training.seed"
SLUG_CHARS = 80  # longest readable part of a run id; the hash keeps ids unique anyway
SIGNIFICANT_DIGITS = 4  # random float samples are rounded so ids and overrides stay readable


class RandomParam(NamedTuple):
    kind: str  # choice | int | float
    choices: tuple[Any, ...]
    low: float
    high: float
    log: bool


class SweepSpec(NamedTuple):
    name: str
    path: Path  # the sweep file
    experiment: Path  # resolved base experiment file
    experiment_label: str  # as written in the sweep file; part of every run id's hash
    overrides: dict[str, Any]  # fixed for every trial
    grid: dict[str, list[Any]]
    combine: str
    random_seed: int
    random_trials: int
    random_params: dict[str, RandomParam]
    seeds: list[int]
    metric: str

    @property
    def swept_keys(self) -> list[str]:
        """The keys that vary between trials, in file order (the seed last)."""
        keys = [*self.grid, *self.random_params]
        return [*keys, SEED_KEY] if self.seeds else keys


class Trial(NamedTuple):
    run_id: str
    params: dict[str, Any]  # the varied values, key -> value
    overrides: list[str]  # 'key=value' for train.py: the fixed overrides, then params


def _schema_leaves(root: Path) -> dict[str, Any]:
    """Dotted key -> default value, for every leaf of configs/default.yaml."""
    out: dict[str, Any] = {}

    def walk(tree: Mapping[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(read_yaml(root / "default.yaml"), "")
    return out


def _check_key(path: Path, where: str, key: Any, schema: Mapping[str, Any]) -> str:
    if not isinstance(key, str) or key not in schema:
        tree: dict[str, Any] = {}
        for leaf, value in schema.items():
            tree = deep_merge(tree, nest(leaf, value))
        hint = unknown_key_hint(str(key), tree)
        raise ConfigError(f"{path}: {where}: {key!r} is not a config key in default.yaml{hint}")
    return key


def _expect(path: Path, key: str, value: Any, kind: Any, what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: {key} must be {what}, got {value!r}")
    return value


def _random_param(path: Path, key: str, spec: Any, default: Any) -> RandomParam:
    where = f"random.params.{key}"
    _expect(path, where, spec, dict, "a mapping {choices: [...]} or {low, high, log}")
    if set(spec) == {"choices"}:
        choices = _expect(path, f"{where}.choices", spec["choices"], list, "a non-empty list")
        if not choices:
            raise ConfigError(f"{path}: {where}.choices must be a non-empty list")
        return RandomParam("choice", tuple(choices), 0.0, 0.0, False)
    if not {"low", "high"} <= set(spec) <= {"low", "high", "log"}:
        raise ConfigError(
            f"{path}: {where}: expected keys low, high (and optionally log) or choices, "
            f"got {', '.join(map(str, spec))}"
        )
    if isinstance(default, bool) or not isinstance(default, int | float):
        raise ConfigError(f"{path}: {where}: a range needs a numeric key; use choices instead")
    low = _expect(path, f"{where}.low", spec["low"], int | float, "a number")
    high = _expect(path, f"{where}.high", spec["high"], int | float, "a number")
    log = _expect(path, f"{where}.log", spec.get("log", False), bool, "true or false")
    if not low < high:
        raise ConfigError(f"{path}: {where}: low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{path}: {where}: log: true needs low > 0, got {low}")
    kind = "int" if isinstance(default, int) else "float"
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{path}: {where}: {key} is an int key; low and high must be integers")
    return RandomParam(kind, (), float(low), float(high), log)


def _resolve_experiment(path: Path, value: str) -> Path:
    """Relative experiment paths are tried from the working directory, then the repo root."""
    candidates = [Path(value)] if Path(value).is_absolute() else [Path(value), REPO_ROOT / value]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()  # trials run from the repo root
    raise ConfigError(f"{path}: experiment file not found: {value}")


def load_sweep(path: str | Path, root: Path = CONFIG_ROOT) -> SweepSpec:
    """Reads and validates a sweep file; every key it names must exist in default.yaml.

    Value types and ranges are checked by each trial's own config loader, so one bad value
    fails that trial only (it is reported in the summary).
    """
    path = Path(path)
    data = read_yaml(path)
    unknown = [k for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(
            f"{path}: unknown sweep key {unknown[0]!r}; allowed: {', '.join(SWEEP_KEYS)}"
        )
    schema = _schema_leaves(root)

    name = _expect(path, "name", data.get("name", path.stem), str, "a string")
    if not RUN_ID.match(name) or set(name) == {"."}:
        raise ConfigError(f"{path}: name {name!r}: use only letters, digits, '-', '_' and '.'")
    if "experiment" not in data:
        raise ConfigError(
            f"{path}: 'experiment' is required, e.g. configs/experiment/baseline.yaml"
        )
    label = _expect(path, "experiment", data["experiment"], str, "a path to an experiment YAML")
    experiment = _resolve_experiment(path, label)

    overrides = _expect(path, "overrides", data.get("overrides") or {}, dict, "a mapping")
    for key in overrides:
        _check_key(path, "overrides", key, schema)

    grid = _expect(path, "grid", data.get("grid") or {}, dict, "a mapping key: [values]")
    for key, values in grid.items():
        _check_key(path, "grid", key, schema)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list, got {values!r}")
    combine = _expect(path, "combine", data.get("combine", "product"), str, "a string")
    if combine not in COMBINE:
        raise ConfigError(f"{path}: combine: {combine!r} is not one of {', '.join(COMBINE)}")
    if combine == "zip" and len({len(v) for v in grid.values()}) > 1:
        lengths = ", ".join(f"{k}: {len(v)}" for k, v in grid.items())
        raise ConfigError(f"{path}: combine: zip needs grid lists of equal length ({lengths})")

    random = _expect(path, "random", data.get("random") or {}, dict, "a mapping")
    params: dict[str, RandomParam] = {}
    seed, trials = 0, 0
    if random:
        missing = [k for k in RANDOM_KEYS if k not in random]
        extra = [k for k in random if k not in RANDOM_KEYS]
        if missing or extra:
            raise ConfigError(
                f"{path}: random needs exactly the keys {', '.join(RANDOM_KEYS)}"
                f" (missing: {', '.join(missing) or '-'}; unknown: {', '.join(map(str, extra)) or '-'})"
            )
        seed = _expect(path, "random.seed", random["seed"], int, "an integer")
        trials = _expect(path, "random.trials", random["trials"], int, "a positive integer")
        if trials <= 0:
            raise ConfigError(f"{path}: random.trials must be > 0, got {trials}")
        raw = _expect(path, "random.params", random["params"], dict, "a non-empty mapping")
        if not raw:
            raise ConfigError(f"{path}: random.params must be a non-empty mapping")
        for key, spec in raw.items():
            _check_key(path, "random.params", key, schema)
            if key in grid:
                raise ConfigError(f"{path}: {key} is both in grid and in random.params")
            params[key] = _random_param(path, key, spec, schema[key])

    seeds = _expect(path, "seeds", data.get("seeds") or [], list, "a list of integers")
    for s in seeds:
        _expect(path, "seeds", s, int, "a list of integers")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds contains duplicates: {seeds}")
    if seeds and (SEED_KEY in grid or SEED_KEY in params):
        raise ConfigError(f"{path}: {SEED_KEY} is swept by 'seeds'; remove it from grid/random")
    swept = [*grid, *params, *([SEED_KEY] if seeds else [])]
    both = [k for k in overrides if k in swept]
    if both:
        raise ConfigError(f"{path}: {both[0]} is both a fixed override and swept")
    if not (grid or params or seeds):
        raise ConfigError(f"{path}: nothing to sweep; give grid, random or seeds")

    metric = _expect(path, "metric", data.get("metric", "val_elbo"), str, "a string")
    if metric not in METRICS:
        raise ConfigError(f"{path}: metric: {metric!r} is not one of {', '.join(METRICS)}")
    return SweepSpec(
        name=name,
        path=path,
        experiment=experiment,
        experiment_label=label,
        overrides=dict(overrides),
        grid={k: list(v) for k, v in grid.items()},
        combine=combine,
        random_seed=seed,
        random_trials=trials,
        random_params=params,
        seeds=list(seeds),
        metric=metric,
    )


def format_value(value: Any) -> str:
    """A value as train.py's override parser (YAML 1.1) reads it back: 0.5, 1.0e-05, [32, 16], relu."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:  # YAML 1.1 reads 1e-05 as a string, 1.0e-05 as a float
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, str):
        try:
            plain = yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        if plain and value.strip() == value and not set(value) & set(",[]{}#"):
            return value
    return json.dumps(value)


def _sample(param: RandomParam, rng: np.random.Generator) -> Any:
    if param.kind == "choice":
        return param.choices[int(rng.integers(len(param.choices)))]
    if param.log:
        x = math.exp(rng.uniform(math.log(param.low), math.log(param.high)))
    else:
        x = rng.uniform(param.low, param.high)
    if param.kind == "int":
        return int(min(max(round(x), param.low), param.high))
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


def random_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """random_trials samples from numpy's PCG64 seeded with random.seed, keys in file order."""
    rng = np.random.default_rng(spec.random_seed)
    return [
        {key: _sample(param, rng) for key, param in spec.random_params.items()}
        for _ in range(spec.random_trials)
    ]


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    keys = list(spec.grid)
    combos = (
        zip(*spec.grid.values(), strict=True)
        if spec.combine == "zip"
        else itertools.product(*spec.grid.values())
    )
    return [dict(zip(keys, combo, strict=True)) for combo in combos]


def _slug(value: Any) -> str:
    """A value as run-id characters: 0.5, -1.0, 32x16 (a list), relu."""
    if isinstance(value, list | tuple):
        return "x".join(_slug(v) for v in value) or "none"
    if isinstance(value, str):
        return re.sub(r"[^A-Za-z0-9.-]+", "-", value).strip("-") or "empty"
    return re.sub(r"[^A-Za-z0-9.-]+", "-", format_value(value))


def trial_id(spec: SweepSpec, params: Mapping[str, Any], overrides: list[str]) -> str:
    """<sweep>-<leaf><value>_..._<hash6>: readable, and unique through a hash of what defines it.

    The hash covers the experiment path and every override (fixed and varied), so editing the
    fixed overrides of a sweep gives new run ids instead of silently reusing old runs.
    """
    readable = "_".join(f"{k.rsplit('.', 1)[-1]}{_slug(v)}" for k, v in params.items())
    defining = json.dumps({"experiment": spec.experiment_label, "overrides": sorted(overrides)})
    digest = hashlib.sha256(defining.encode()).hexdigest()[:6]
    readable = readable[:SLUG_CHARS].rstrip("-_.")
    return f"{spec.name}-{readable}-{digest}" if readable else f"{spec.name}-{digest}"


def expand(spec: SweepSpec) -> list[Trial]:
    """All trials in a fixed order: grid-major, then random sample, then seed.

    Identical trials (a random sample drawn twice) are kept once.
    """
    grid = grid_points(spec) or [{}]
    rand = random_points(spec) if spec.random_params else [{}]
    points = [{**g, **r} for g in grid for r in rand]
    if spec.seeds:
        points = [{**p, SEED_KEY: s} for p in points for s in spec.seeds]
    fixed = [f"{k}={format_value(v)}" for k, v in spec.overrides.items()]
    trials: dict[str, Trial] = {}
    for params in points:
        overrides = [*fixed, *(f"{k}={format_value(v)}" for k, v in params.items())]
        run_id = trial_id(spec, params, overrides)
        trials.setdefault(run_id, Trial(run_id, params, overrides))
    return list(trials.values())
