"""A sweep's results: summary.csv, summary.md and a PNG of the swept parameter vs the metric.

One row per trial, read from the trial's own run record (metrics.json) and the workdir's
runs.csv (wall time summed over the run's start/end segments, so resumes count).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from src.experiments.runner import Outcome
from src.experiments.spec import METRICS, SEED_KEY, SweepSpec, Trial, format_value
from src.training.run.run_index import FILE_NAME, read_rows
from src.training.run.rundir import run_paths
from src.utils.io import atomic_write_text, read_json

# The plottable metrics (spec.METRICS, best_value first) with the best record's name and step.
RESULT_COLUMNS = ("best_metric", METRICS[0], "best_step", *METRICS[1:])
MAX_TICKS = 12  # up to this many swept values get their own x tick label


def wall_seconds(index_rows: Sequence[Mapping[str, str]], run_id: str) -> float | None:
    """Sum of (ended_at - started_at) over the run's end rows in runs.csv."""
    total, found = 0.0, False
    for row in index_rows:
        if row["run_id"] == run_id and row["event"] == "end" and row["ended_at"]:
            start = dt.datetime.fromisoformat(row["started_at"])
            total += (dt.datetime.fromisoformat(row["ended_at"]) - start).total_seconds()
            found = True
    return total if found else None


def trial_row(
    spec: SweepSpec,
    trial: Trial,
    outcome: Outcome | None,
    workdir: Path,
    index_rows: Sequence[Mapping[str, str]],
) -> dict[str, Any]:
    metrics_path = run_paths(workdir, trial.run_id).metrics
    record = read_json(metrics_path) if metrics_path.is_file() else {}
    best = record.get("best") or {}
    val = record.get("final", {}).get("val", {})
    train = record.get("final", {}).get("train", {})
    return {
        "run_id": trial.run_id,
        "status": outcome.status if outcome else record.get("status", "not run"),
        "action": outcome.action if outcome else "",
        **{key: trial.params[key] for key in spec.swept_keys},
        "best_metric": best.get("metric"),
        "best_value": best.get("value"),
        "best_step": best.get("step"),
        "val_elbo": val.get("elbo"),
        "val_recon": val.get("recon"),
        "val_kl": val.get("kl"),
        "val_active_units": val.get("active_units"),
        "train_loss": train.get("loss"),
        "wall_s": wall_seconds(index_rows, trial.run_id),
        "error": outcome.error if outcome else "",
    }


def collect_rows(
    spec: SweepSpec, trials: Sequence[Trial], outcomes: Mapping[str, Outcome], workdir: Path
) -> list[dict[str, Any]]:
    index_rows = read_rows(Path(workdir) / FILE_NAME)
    return [trial_row(spec, t, outcomes.get(t.run_id), workdir, index_rows) for t in trials]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | bool):
        return format_value(value)
    return str(value)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def to_markdown(spec: SweepSpec, rows: Sequence[Mapping[str, Any]]) -> str:
    done = [r for r in rows if r["status"] == "completed" and r[spec.metric] is not None]
    lines = [
        f"# Sweep {spec.name}",
        "",
        f"Base experiment: `{spec.experiment_label}`; sweep file: `{spec.path}`; "
        f"fixed overrides: {', '.join(f'`{k}={format_value(v)}`' for k, v in spec.overrides.items()) or 'none'}.",
        f"{len(done)} of {len(rows)} trials completed; plotted metric: `{spec.metric}`.",
        "",
    ]
    if done:
        larger_is_better = spec.metric in ("best_value", "val_elbo", "val_active_units")
        pick = max if larger_is_better else min
        top = pick(done, key=lambda r: r[spec.metric])
        lines += [f"Best by {spec.metric}: `{top['run_id']}` ({_cell(top[spec.metric])}).", ""]
    columns = [c for c in (rows[0] if rows else {}) if c != "error"]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + " --- |" * len(columns))
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    failed = [r for r in rows if r["error"]]
    if failed:
        lines += ["", "## Problems", ""]
        lines += [f"- `{r['run_id']}` ({r['status']}): {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def plot(spec: SweepSpec, rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """metric against the first swept key; one line per setting of the other swept keys.

    Repeats over seeds are drawn as points, their mean as the line, and the spread (min to max)
    as error bars. Non-numeric values (lists, names) are placed in trial order. Returns False
    (and writes nothing) when no trial completed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in spec.swept_keys if k != SEED_KEY] or [SEED_KEY]
    x_key, group_keys = keys[0], keys[1:]
    done = [r for r in rows if r["status"] == "completed" and r[spec.metric] is not None]
    if not done:
        return False
    numeric = _numeric([r[x_key] for r in done])
    order = list(dict.fromkeys(format_value(r[x_key]) for r in done))  # lists are unhashable
    groups: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in done:
        x = float(r[x_key]) if numeric else float(order.index(format_value(r[x_key])))
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={format_value(r[k])}" for k in group_keys)
        groups[label][x].append(float(r[spec.metric]))

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, by_x in groups.items():
        xs = sorted(by_x)
        mean = np.array([np.mean(by_x[x]) for x in xs])
        spread = [
            mean - np.array([min(by_x[x]) for x in xs]),
            np.array([max(by_x[x]) for x in xs]) - mean,
        ]
        bars = ax.errorbar(xs, mean, yerr=spread, marker="o", capsize=3, label=label or None)
        points = [(x, v) for x in xs if len(by_x[x]) > 1 for v in by_x[x]]
        if points:
            px, py = zip(*points, strict=True)
            ax.scatter(px, py, s=10, alpha=0.5, color=bars[0].get_color())
    xs_all = sorted({x for by_x in groups.values() for x in by_x})
    if numeric and xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(order)), order)
    elif len(xs_all) <= MAX_TICKS:  # label the swept values themselves, not log-scale decades
        ax.minorticks_off()
        ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
    ax.set_xlabel(x_key)
    ax.set_ylabel(spec.metric)
    repeats = f" (mean and min-max over {len(spec.seeds)} seeds)" if len(spec.seeds) > 1 else ""
    ax.set_title(f"sweep {spec.name}{repeats}", fontsize="medium")
    if group_keys:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)  # atomic, like every other file of the record
    return True


def write_summary(spec: SweepSpec, rows: Sequence[Mapping[str, Any]], folder: Path) -> None:
    atomic_write_text(folder / "summary.csv", to_csv(rows))
    atomic_write_text(folder / "summary.md", to_markdown(spec, rows))
