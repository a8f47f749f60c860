"""The sweep, log_experiment and check_experiments commands: flags -> src.experiments calls."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from src.experiments import experiment_log, runner, summary
from src.experiments.spec import REPO_ROOT, Trial, expand, load_sweep
from src.training.run.run_index import FILE_NAME as RUN_INDEX_FILE
from src.training.run.run_index import read_rows
from src.utils.cli import ArgumentParser
from src.utils.errors import RunDirError, UserError
from src.utils.io import atomic_write_json

SOME_TRIALS_FAILED = 1


def _positive_int(text: str) -> int:
    """argparse type; its errors become 'argument --workers: ...' (status 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def select_trials(trials: Sequence[Trial], positions: str | None, match: str | None) -> list[Trial]:
    """The trials picked by --trials (1-based positions as --dry_run lists them: '2', '1,4-6')
    and --match (text in the run id); all of them without either. A bad or empty pick is a
    UserError."""
    picked = list(range(len(trials)))
    if positions is not None:
        chosen: set[int] = set()
        for part in positions.split(","):
            first, dash, last = part.strip().partition("-")
            try:
                low, high = int(first), int(last if dash else first)
            except ValueError:
                raise UserError(
                    f"--trials={positions}: expected positions and ranges such as 1,3-5"
                ) from None
            if not 1 <= low <= high <= len(trials):
                raise UserError(
                    f"--trials={positions}: {part.strip()} is not within 1-{len(trials)} "
                    "(python scripts/sweep.py --config=... --dry_run lists the trials)"
                )
            chosen.update(range(low - 1, high))
        picked = [i for i in picked if i in chosen]
    if match is not None:
        picked = [i for i in picked if match in trials[i].run_id]
        if not picked:
            raise UserError(f"--match={match}: no selected trial's run id contains {match!r}")
    return [trials[i] for i in picked]


def duration(seconds: float) -> str:
    """'45 s', '3 min 10 s', '2 h 05 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """The sweep's console, one plain line per event (readable in a log file): a trial's process
    starts; a trial ends, with the time left estimated from the trials run so far (before the
    first one ends: from earlier runs of the sweep's trials in runs.csv, if any)."""

    def __init__(self, total: int, to_run: set[str], workers: int, prior: list[float]) -> None:
        self.total, self.workers = total, workers
        self.to_run = set(to_run)  # run ids of the trials expected to start a process, not ended
        self.planned = len(to_run)
        self.prior = prior  # seconds of earlier runs of these trials
        self.taken: list[float] = []  # seconds of the trials run by this invocation
        self.running: dict[str, float] = {}  # run id -> time.monotonic() at its start
        self.ended = 0
        self.lock = threading.Lock()

    def per_trial(self) -> tuple[float, str] | None:
        """(seconds per trial, where that comes from), None without any measurement."""
        if self.taken:
            return sum(self.taken) / len(self.taken), "this sweep's trials so far"
        if self.prior:
            return (
                sum(self.prior) / len(self.prior),
                f"{len(self.prior)} earlier runs in runs.csv, start-up not counted",
            )
        return None

    def estimate(self, left: int) -> str:
        """'about 3 min 10 s left (40 s per trial, ...)' for `left` trials not ended, the running
        ones counted with what they have done already."""
        if left <= 0:
            return "nothing left to run"
        rate = self.per_trial()
        if rate is None:
            return "estimate after the first trial"
        seconds, source = rate
        now = time.monotonic()
        work = seconds * (left - len(self.running))
        work += sum(max(seconds - (now - start), 0.0) for start in self.running.values())
        total = work / min(self.workers, left)
        return f"about {duration(total)} left ({duration(seconds)} per trial, {source})"

    def header(self) -> str:
        skipped = self.total - self.planned
        done = f", {skipped} done already" if skipped else ""
        return f"{self.planned} to run{done}; {self.estimate(self.planned)}"

    def started(self, trial: Trial, action: str, log: Path) -> None:
        with self.lock:
            self.running[trial.run_id] = time.monotonic()
            print(f"[start] {trial.run_id} ({action}), log {log}", flush=True)

    def finished(self, outcome: runner.Outcome) -> None:
        with self.lock:
            self.ended += 1
            self.to_run.discard(outcome.run_id)
            self.running.pop(outcome.run_id, None)
            took = ""
            if outcome.action != "skipped":
                self.taken.append(outcome.seconds)
                took = f", {outcome.seconds:.1f} s"
            error = f": {outcome.error}" if outcome.error else ""
            eta = f"; {self.estimate(len(self.to_run))}" if outcome.action != "skipped" else ""
            print(
                f"[{self.ended}/{self.total}] {outcome.run_id}: {outcome.status} "
                f"({outcome.action}{took}){error}{eta}",
                flush=True,
            )


def _prior_seconds(trials: Sequence[Trial], workdir: Path) -> list[float]:
    """Wall times in runs.csv of earlier runs of these trials (interrupted or completed)."""
    rows = read_rows(workdir / RUN_INDEX_FILE)
    found = (summary.wall_seconds(rows, t.run_id) for t in trials)
    return [s for s in found if s is not None]


def sweep_main(argv: Sequence[str]) -> int:
    parser = ArgumentParser(
        prog="sweep.py",
        description="Run a parameter sweep of training runs: every trial of the sweep file is "
        "its own scripts/train.py process. Re-running skips completed trials and resumes "
        "interrupted ones.",
        epilog="The sweep file (keys name, experiment, overrides, grid, combine, random, seeds,\n"
        "metric) is described in docs/experiments.md; its overrides and grid keys are config keys,\n"
        "documented in configs/default.yaml.\n\n"
        "examples:\n"
        "  python scripts/sweep.py --config=configs/sweep/beta.yaml --workers=2\n"
        "  python scripts/sweep.py --config=configs/sweep/beta.yaml --dry_run   # the trials\n"
        "  python scripts/sweep.py --config=configs/sweep/beta.yaml --match=seed42  # one seed\n"
        "  python scripts/sweep.py --config=configs/sweep/beta.yaml --trials=1-3",
    )
    parser.add_argument("--config", required=True, help="sweep YAML, e.g. configs/sweep/beta.yaml")
    parser.add_argument("--workers", type=_positive_int, default=1, help="trials run at once")
    parser.add_argument("--workdir", default="results", help="root of checkpoints/ and sweeps/")
    parser.add_argument(
        "--devices",
        default="auto",
        help="GPU ids shared out over the workers: auto (CUDA_VISIBLE_DEVICES or nvidia-smi), "
        "none, or a list such as 0,1,2,3",
    )
    parser.add_argument(
        "--trials",
        metavar="LIST",
        help="run only these trials: positions as --dry_run numbers them, e.g. 1,3-5 (the "
        "summary still lists every trial)",
    )
    parser.add_argument(
        "--match",
        metavar="TEXT",
        help="run only the trials whose run id contains TEXT, e.g. seed42 or beta0.5",
    )
    parser.add_argument(
        "--dry_run", action="store_true", help="list the (selected) trials, numbered, and exit"
    )
    args = parser.parse_args(argv)

    spec = load_sweep(args.config)
    trials = expand(spec)
    selected = select_trials(trials, args.trials, args.match)
    workdir = Path(args.workdir).absolute()
    actions = {t.run_id: runner.trial_action(workdir / "checkpoints" / t.run_id) for t in selected}
    if args.dry_run:
        position = {t.run_id: i for i, t in enumerate(trials, start=1)}
        for trial in selected:
            print(
                f"{position[trial.run_id]}\t{trial.run_id}\t{actions[trial.run_id]}\t"
                f"{' '.join(trial.overrides)}"
            )
        return 0
    envs = runner.slot_envs(args.workers, runner.visible_gpus(args.devices))
    folder = runner.sweep_dir(workdir, spec)
    to_run = {run_id for run_id, action in actions.items() if action != "skip"}
    progress = Progress(len(selected), to_run, args.workers, _prior_seconds(selected, workdir))
    subset = f" ({len(selected)} of {len(trials)} selected)" if len(selected) < len(trials) else ""
    print(
        f"sweep {spec.name}: {len(trials)} trials{subset}, {args.workers} "
        f"worker{'s' if args.workers > 1 else ''}, record in "
        f"{folder}; {progress.header()}",
        flush=True,
    )
    with runner.sweep_lock(folder):
        atomic_write_json(
            folder / "trials.json",
            {
                "sweep": str(spec.path),
                "experiment": spec.experiment_label,
                "trials": [
                    {"run_id": t.run_id, "params": t.params, "overrides": t.overrides}
                    for t in trials
                ],
            },
        )
        outcomes = runner.run_trials(
            spec, selected, workdir, envs, progress.finished, progress.started
        )
        rows = summary.collect_rows(spec, trials, outcomes, workdir)
        summary.write_summary(spec, rows, folder)
        plotted = summary.plot(spec, rows, folder / "summary.png")
    bad = [o for o in outcomes.values() if o.status != "completed"]
    print(
        f"sweep {spec.name}: {len(selected) - len(bad)}/{len(selected)} "
        f"{'selected trials ' if subset else ''}completed; "
        f"{folder / 'summary.md'}" + (f", {folder / 'summary.png'}" if plotted else "")
    )
    return SOME_TRIALS_FAILED if bad else 0


def log_experiment_main(argv: Sequence[str]) -> int:
    parser = ArgumentParser(
        prog="log_experiment.py", description="Draft an EXPERIMENTS.md entry from a finished run."
    )
    parser.add_argument("--run_dir", required=True, help="results/checkpoints/<run_id>")
    parser.add_argument(
        "--baseline",
        default=str(REPO_ROOT / "configs" / "experiment" / "baseline.yaml"),
        help="experiment the Changes field is computed against",
    )
    parser.add_argument(
        "--experiments_md",
        default=str(REPO_ROOT / "EXPERIMENTS.md"),
        help="log whose highest entry number + 1 numbers the draft",
    )
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    for name in ("config.yaml", "metrics.json"):
        if not (run_dir / name).is_file():
            raise RunDirError(f"--run_dir {run_dir}: no {name}; expected a run folder")
    log = Path(args.experiments_md)
    number = experiment_log.next_number(log.read_text()) if log.is_file() else 1
    print(experiment_log.render_entry(run_dir, Path(args.baseline), number, REPO_ROOT), end="")
    return 0


def check_experiments_main(argv: Sequence[str]) -> int:
    parser = ArgumentParser(
        prog="check_experiments.py",
        description="Fail unless every configs/experiment/*.yaml has a complete EXPERIMENTS.md entry.",
    )
    parser.add_argument("--repo", default=str(REPO_ROOT), help="repository root")
    args = parser.parse_args(argv)
    repo = Path(args.repo)
    log = repo / "EXPERIMENTS.md"
    if not log.is_file():
        raise RunDirError(f"{log} not found")
    configs = sorted(
        str(p.relative_to(repo)) for p in (repo / "configs" / "experiment").glob("*.yaml")
    )
    problems = experiment_log.check_log(log.read_text(), configs)
    for problem in problems:
        print(f"EXPERIMENTS.md: {problem}", file=sys.stderr)
    if not problems:
        print(f"EXPERIMENTS.md documents all {len(configs)} experiment configs")
    return 1 if problems else 0
