"""EXPERIMENTS.md discipline: draft an entry from a run, and check that every experiment has one.

Entry format (the project's seed format; field names are case-insensitive, may be bold, and a
field's text may continue on the following lines):

    ## Experiment 001
    Date: 2026-11-24
    Goal: ...
    Config: configs/experiment/baseline.yaml ...
    Changes: ...
    Results: ...
    Observations: ...
    Next Step: ...

An entry is linked to an experiment config by naming its path (configs/experiment/NAME.yaml)
in the Config field. A field that is empty or still holds a `<fill in ...>` placeholder from
scripts/log_experiment.py counts as missing.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from src.utils.config import load_config, load_saved_config, to_plain
from src.utils.io import read_json

FIELDS = ("Date", "Goal", "Config", "Changes", "Results", "Observations", "Next Step")
PLACEHOLDER = "<fill in"
HEADING = re.compile(r"^##\s+Experiment\s+(\d+)\b", re.IGNORECASE)
SECTION = re.compile(r"^#{1,2}\s")  # any other level-1/2 heading ends an entry
# "Results:", "**Results:**", "- Results (validation split, 3 seeds):"
FIELD = re.compile(
    r"^\s*(?:[-*]\s+)?(?:\*\*)?(" + "|".join(FIELDS) + r")\b\s*(?:\([^)]*\))?\s*:(?:\*\*)?\s*(.*)$",
    re.IGNORECASE,
)
CONFIG_PATH = re.compile(r"configs/experiment/[A-Za-z0-9_.\-/]+?\.ya?ml")


class Entry(NamedTuple):
    number: int
    line: int  # 1-based line of the heading
    fields: dict[str, str]  # canonical field name -> text (continuation lines joined)


def parse_entries(text: str) -> list[Entry]:
    """The '## Experiment NNN' sections of EXPERIMENTS.md with their fields.

    A field runs from its 'Name:' line to the next field or heading; fenced code blocks are
    part of the field they appear in.
    """
    canonical = {f.lower(): f for f in FIELDS}
    entries: list[Entry] = []
    current: str | None = None
    in_entry = in_fence = False
    for i, line in enumerate(text.splitlines(), start=1):
        fence = line.lstrip().startswith("```")
        if not in_fence and not fence:
            heading = HEADING.match(line)
            if heading:
                entries.append(Entry(int(heading.group(1)), i, {}))
                in_entry, current = True, None
                continue
            if SECTION.match(line):
                in_entry, current = False, None
                continue
        in_fence = in_fence != fence
        if not in_entry:
            continue
        field = FIELD.match(line) if not (in_fence or fence) else None
        fields = entries[-1].fields
        if field:
            current = canonical[field.group(1).lower()]
            fields[current] = field.group(2).strip()
        elif current is not None and line.strip():
            fields[current] = f"{fields[current]} {line.strip()}".strip()
    return entries


def check_log(text: str, config_paths: Iterable[str]) -> list[str]:
    """Problems that make the log incomplete; [] when every config has a complete entry.

    Args:
      text: the contents of EXPERIMENTS.md.
      config_paths: repo-relative paths such as 'configs/experiment/baseline.yaml'.
    """
    problems: list[str] = []
    entries = parse_entries(text)
    seen: dict[int, int] = {}
    for entry in entries:
        name = f"Experiment {entry.number:03d} (line {entry.line})"
        if entry.number in seen:
            problems.append(f"{name}: number already used at line {seen[entry.number]}")
        seen.setdefault(entry.number, entry.line)
        for field in FIELDS:
            value = entry.fields.get(field)
            if value is None:
                problems.append(f"{name}: missing field '{field}:'")
            elif not value:
                problems.append(f"{name}: field '{field}:' is empty")
            elif PLACEHOLDER in value:
                problems.append(f"{name}: field '{field}:' still has a '{PLACEHOLDER} ...>' note")
    linked = {p for e in entries for p in CONFIG_PATH.findall(e.fields.get("Config", ""))}
    for path in sorted(config_paths):
        if path not in linked:
            problems.append(
                f"{path} has no entry: name it in an entry's 'Config:' field "
                f"(draft one with scripts/log_experiment.py --run_dir=...)"
            )
    return problems


def next_number(text: str) -> int:
    return max((e.number for e in parse_entries(text)), default=0) + 1


def flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(run: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[str]:
    """'key: baseline -> run' for every differing key, experiment.* (metadata) excluded."""
    a, b = flat(baseline), flat(run)
    return [
        f"{key}: {json.dumps(a.get(key))} -> {json.dumps(b.get(key))}"
        for key in sorted(set(a) | set(b))
        if not key.startswith("experiment.") and a.get(key) != b.get(key)
    ]


def experiment_file(command: list[str], repo: Path) -> str | None:
    """The --config=FILE of the train command in provenance.json, repo-relative when inside it."""
    value = None
    for i, arg in enumerate(command):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(command):
            value = command[i + 1]
    if value is None:
        return None
    return relative(value, repo)


def relative(path: str | Path, repo: Path) -> str:
    """path relative to the repo root when it lies inside it, else unchanged."""
    try:
        return str(Path(path).resolve().relative_to(repo.resolve()))
    except ValueError:
        return str(path)


def display_command(command: list[str], repo: Path) -> str:
    """The train command as a user would type it from the repo root."""
    args = []
    for arg in command[2:]:
        key, sep, value = arg.partition("=")
        if sep and Path(value).is_absolute():
            value = relative(value, repo)
        args.append(f"{key}{sep}{value}")
    script = Path(command[1]).name if len(command) > 1 else "train.py"
    return shlex.join(["python", f"scripts/{script}", *args])


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_entry(run_dir: Path, baseline: Path, number: int, repo: Path) -> str:
    """A draft EXPERIMENTS.md entry for the run in run_dir, with `<fill in ...>` for the researcher.

    Goal comes from experiment.goal, Changes from the resolved config's difference to the
    baseline experiment's, Results from metrics.json, Date from the run's start.
    """
    config = to_plain(load_saved_config(run_dir / "config.yaml"))
    metrics = read_json(run_dir / "metrics.json")
    prov = read_json(run_dir / "provenance.json") if (run_dir / "provenance.json").is_file() else {}
    base = to_plain(load_config(baseline))
    command = prov.get("command", [])
    exp_file = (
        experiment_file(command, repo) or f"configs/experiment/{config['experiment']['name']}.yaml"
    )
    git = prov.get("git", {})
    dirty = " (dirty working tree)" if git.get("dirty") else ""
    date = (prov.get("started_at") or "")[:10] or f"{PLACEHOLDER}: run date>"
    goal = (
        config["experiment"].get("goal")
        or f"{PLACEHOLDER}: experiment.goal is empty in {exp_file}>"
    )

    changes = config_changes(config, base)
    base_label = relative(baseline, repo)
    changes_text = (
        f"against {base_label}: " + "; ".join(changes) if changes else f"none against {base_label}"
    )

    best = metrics.get("best") or {}
    val = metrics.get("final", {}).get("val", {})
    train = metrics.get("final", {}).get("train", {})
    latent = config["model"]["latent_dim"]
    results = [
        f"run `{metrics.get('run_id', run_dir.name)}` {metrics.get('status')}",
        f"best val {best.get('metric')} {_fmt(best.get('value'))} at step {best.get('step')}"
        f" of {metrics.get('total_steps')}",
        "final val "
        + ", ".join(f"{k} {_fmt(val[k])}" for k in ("elbo", "recon", "kl") if k in val)
        + f", active units {val.get('active_units')}/{latent}",
        f"final train loss {_fmt(train.get('loss'))}",
        f"{metrics.get('param_count')} parameters",
    ]
    lines = [
        f"## Experiment {number:03d}",
        f"Date: {date}",
        f"Goal: {goal}",
        f"Config: {exp_file} (config hash {metrics.get('config_hash')}, commit "
        f"{(git.get('commit') or 'unknown')[:12]}{dirty}); reproduce with "
        f"`{display_command(command, repo)}`",
        f"Changes: {changes_text}",
        f"Results: {'; '.join(results)}.",
        f"Observations: {PLACEHOLDER}: what the numbers show, compared with the baseline>",
        f"Next Step: {PLACEHOLDER}: the experiment this suggests>",
    ]
    return "\n".join(lines) + "\n"
