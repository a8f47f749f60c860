"""The commands of experiments: sweep, log_experiment, check_experiments and benchmark
(scripts/<command>.py calls <command>_main): flags -> src.experiments calls.

Nothing here imports JAX at the top (the benchmark sets the XLA flags before JAX starts)."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from src.experiments import experiment_log, launcher, runner, slurm, summary
from src.experiments.spec import REPO_ROOT, SweepSpec, Trial, expand, load_sweep
from src.training.run.run_index import FILE_NAME as RUN_INDEX_FILE
from src.training.run.run_index import read_rows
from src.utils.cli import ArgumentParser, interrupted_status, run, split_overrides
from src.utils.config import load_config
from src.utils.errors import ConfigError, RunDirError, UserError
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
    first one ends: from earlier runs of the sweep's trials in runs.csv, if any).

    A trial's time here is its whole process, start-up included; the summary's wall_s is the
    training loop's time from runs.csv, without start-up (imports, data loading)."""

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
        ones counted with what they have done already: the work left shared over the workers,
        but never less than the longest single trial left (a trial runs on one worker, so the
        last one leaves the others idle, and the estimate does not rise when they are)."""
        if left <= 0:
            return "nothing left to run"
        rate = self.per_trial()
        if rate is None:
            return "estimate after the first trial"
        seconds, source = rate
        now = time.monotonic()
        remaining = [max(seconds - (now - start), 0.0) for start in self.running.values()]
        queued = left - len(self.running)
        work = seconds * queued + sum(remaining)
        longest = max([*remaining, seconds if queued > 0 else 0.0])
        total = max(work / min(self.workers, left), longest)
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
                took = f", {outcome.seconds:.1f} s with start-up"
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
    """The sweep command. A signal stops it after its running trials have saved and stopped:
    exit 128 + signal number; Ctrl-C outside the trials (loading, summary) ends it without a
    traceback."""
    try:
        status = run(sweep, argv)
    except KeyboardInterrupt:
        print("sweep: interrupted (SIGINT)", file=sys.stderr)
        return interrupted_status(signal.SIGINT)
    signum = runner.stopped_by()
    return interrupted_status(signum) if signum is not None else status


def sweep(argv: Sequence[str]) -> int:
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
        "  python scripts/sweep.py --config=configs/sweep/beta.yaml --trials=1-3\n"
        "  python scripts/sweep.py --config=configs/sweep/beta.yaml --launcher=slurm \\\n"
        "      --launcher.partition=gpu --launcher.gpus_per_task=1   # SLURM jobs, one array\n\n"
        "--launcher=slurm submits every trial as a SLURM job through submitit; the sweep file's\n"
        "launcher: section and --launcher.KEY=VALUE flags set its keys, documented in\n"
        "configs/launcher/slurm.yaml (docs/distributed.md, section SLURM).",
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
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: processes on this machine (--workers at once); slurm: one SLURM job per "
        "trial, submitted through submitit",
    )
    parser.add_argument(
        "--detach", action="store_true", help="slurm: submit the jobs and return without waiting"
    )
    parser.add_argument(
        "--status", action="store_true", help="slurm: show each trial's job state and run status"
    )
    parser.add_argument("--cancel", action="store_true", help="slurm: cancel the sweep's jobs")
    argv, launcher_flags = launcher.split_flags(argv)
    args = parser.parse_args(argv)
    slurm_only = [f"--{k}" for k in ("detach", "status", "cancel") if getattr(args, k)]
    if launcher_flags:
        slurm_only.append(f"{launcher.FLAG}{next(iter(launcher_flags))}")
    if args.launcher == "local" and slurm_only:
        raise UserError(f"{slurm_only[0]} goes with --launcher=slurm")
    if args.status + args.cancel + args.detach > 1:
        raise UserError("give one of --detach, --status and --cancel")

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
    if args.launcher == "slurm":
        return _slurm_sweep(args, argv, spec, trials, selected, workdir, launcher_flags)
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
        _write_trials(folder, spec, trials)
        outcomes = runner.run_trials(
            spec, selected, workdir, envs, progress.finished, progress.started
        )
        return _finish(spec, trials, selected, outcomes, workdir, folder)


def _write_trials(folder: Path, spec: SweepSpec, trials: Sequence[Trial]) -> None:
    atomic_write_json(
        folder / "trials.json",
        {
            "sweep": str(spec.path),
            "experiment": spec.experiment_label,
            "trials": [
                {"run_id": t.run_id, "params": t.params, "overrides": t.overrides} for t in trials
            ],
        },
    )


def _finish(
    spec: SweepSpec,
    trials: Sequence[Trial],
    selected: Sequence[Trial],
    outcomes: dict[str, runner.Outcome],
    workdir: Path,
    folder: Path,
) -> int:
    """Writes the summary (csv, md, png) and prints the last line; the sweep's exit status."""
    rows = summary.collect_rows(spec, trials, outcomes, workdir)
    summary.write_summary(spec, rows, folder)
    plotted = summary.plot(spec, rows, folder / "summary.png")
    bad = [o for o in outcomes.values() if o.status != "completed"]
    subset = "selected trials " if len(selected) < len(trials) else ""
    print(
        f"sweep {spec.name}: {len(selected) - len(bad)}/{len(selected)} {subset}completed; "
        f"{folder / 'summary.md'}" + (f", {folder / 'summary.png'}" if plotted else "")
    )
    return SOME_TRIALS_FAILED if bad else 0


def _slurm_sweep(
    args: argparse.Namespace,
    argv: Sequence[str],
    spec: SweepSpec,
    trials: Sequence[Trial],
    selected: Sequence[Trial],
    workdir: Path,
    flags: dict[str, object],
) -> int:
    """--launcher=slurm: submit (one job array), then wait, or --detach / --status / --cancel."""
    settings = launcher.settings(spec.path, spec.launcher, flags)
    slurm.check_commands()
    folder = runner.sweep_dir(workdir, spec)
    jobs_folder = slurm.sweep_folder(workdir, spec)
    if args.status:
        position = {t.run_id: i for i, t in enumerate(trials, start=1)}
        for line in slurm.status_lines(selected, position, workdir, jobs_folder):
            print(line)
        return 0
    if args.cancel:
        recorded = slurm.recorded_jobs(jobs_folder)
        ids = [recorded[t.run_id] for t in selected if t.run_id in recorded]
        cancelled = slurm.cancel(ids, settings.poll_s)
        print(f"sweep {spec.name}: cancelled {len(cancelled)} job(s) {' '.join(cancelled)}".strip())
        return 0
    with runner.sweep_lock(folder):
        _write_trials(folder, spec, trials)
        plan = slurm.plan(spec, selected, workdir, jobs_folder)
        labels = {
            t.run_id: {"new": "new", "resume": "resumed", "restart": "restarted"}[
                runner.trial_action(workdir / "checkpoints" / t.run_id)
            ]
            for t in plan.submit
        }
        submitted = slurm.submit(spec, plan.submit, workdir, settings) if plan.submit else {}
    labels.update({run_id: "followed" for run_id in plan.follow})
    jobs = {**plan.follow, **submitted}
    to_run = set(jobs)
    parallel = settings.array_parallelism or max(len(to_run), 1)
    progress = Progress(len(selected), to_run, parallel, _prior_seconds(selected, workdir))
    print(
        f"sweep {spec.name}: {len(trials)} trials, {len(selected)} selected, on SLURM; "
        f"record in {folder}; {progress.header()}",
        flush=True,
    )
    slurm.announce(submitted, jobs_folder)
    for run_id, job in plan.follow.items():
        print(f"[follow] {run_id}: job {job}, submitted earlier", flush=True)
    for outcome in plan.outcomes.values():
        progress.finished(outcome)
    command = shlex.join(
        ["python", "scripts/sweep.py", *(a for a in argv if a not in ("--detach",))]
        + [f"{launcher.FLAG}{k}={v}" for k, v in flags.items()]
    )
    if args.detach:
        if jobs:
            print(
                f"sweep {spec.name}: detached; "
                + slurm.follow_hint(command, jobs.values(), jobs_folder)
            )
        return 0
    by_id = {t.run_id: t for t in selected}
    try:
        ended = slurm.wait(
            spec, by_id, jobs, labels, workdir, settings.poll_s, progress.started, progress.finished
        )
    except KeyboardInterrupt:
        print(
            f"sweep {spec.name}: stopped waiting (SIGINT); "
            + slurm.follow_hint(command, jobs.values(), jobs_folder),
            file=sys.stderr,
        )
        return interrupted_status(signal.SIGINT)
    with runner.sweep_lock(folder):
        return _finish(spec, trials, selected, {**plan.outcomes, **ended}, workdir, folder)


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


def benchmark_main(argv: Sequence[str], started: float) -> int:
    """The benchmark command; started is perf_counter() when the process began (time to the first
    step counts from there, imports included)."""
    rest, overrides = split_overrides(argv)
    parser = ArgumentParser(prog="benchmark.py", description="Measure training speed of a config.")
    parser.add_argument("--config", help="experiment YAML, e.g. configs/experiment/baseline.yaml")
    parser.add_argument("--model", help="model group file to use instead of the experiment's")
    parser.add_argument("--data", help="data group file to use instead of the experiment's")
    parser.add_argument("--steps", type=int, default=300, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; medians are reported")
    parser.add_argument("--matmul_size", type=int, default=2048, help="n of the n x n ceiling")
    parser.add_argument(
        "--iwae_images", type=int, default=0, help="also time IWAE on this many test images"
    )
    parser.add_argument("--out", default="results/benchmark.json", help="JSON file to write")
    args = parser.parse_args(rest)
    if not args.config:
        raise ConfigError("--config is required, e.g. --config=configs/experiment/baseline.yaml")
    for name in ("steps", "repeats", "matmul_size"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.iwae_images < 0:
        raise ConfigError(f"--iwae_images must be >= 0, got {args.iwae_images}")
    cfg = load_config(args.config, {"model": args.model, "data": args.data}, overrides)
    from src.utils.reproducibility import configure_determinism

    configure_determinism(cfg.compile.deterministic_gpu)  # before JAX starts a backend

    from src.training.device.compilation import enable_cache

    enable_cache(cfg.compile)  # before the first compilation
    from src.experiments.benchmark import run_benchmark

    result = run_benchmark(
        cfg, args.steps, args.repeats, args.matmul_size, args.iwae_images, started
    )
    result["command"] = [sys.executable, *sys.argv]
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))
    ref = result["reference"]
    print(
        f"project step {result['examples_per_s']:,.0f} examples/s, reference (plain Flax) step "
        f"{ref['examples_per_s']:,.0f} examples/s: ratio {ref['bare_over_reference']:.3f}; "
        f"the loop (steps_per_call {result['steps_per_call']}) "
        f"{result['loop']['examples_per_s']:,.0f} examples/s: "
        f"ratio {result['loop']['over_reference']:.3f}",
        file=sys.stderr,
    )
    return 0
