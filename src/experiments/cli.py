"""The sweep, log_experiment and check_experiments commands: flags -> src.experiments calls."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from src.experiments import experiment_log, runner, summary
from src.experiments.spec import REPO_ROOT, expand, load_sweep
from src.utils.cli import ArgumentParser
from src.utils.errors import RunDirError
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


def sweep_main(argv: Sequence[str]) -> int:
    parser = ArgumentParser(
        prog="sweep.py",
        description="Run a parameter sweep of training runs: every trial of the sweep file is "
        "its own scripts/train.py process. Re-running skips completed trials and resumes "
        "interrupted ones.",
        epilog="The sweep file (keys name, experiment, overrides, grid, combine, random, seeds,\n"
        "metric) is described in docs/experiments.md; its overrides and grid keys are config keys,\n"
        "documented in configs/default.yaml.\n\n"
        "example:\n"
        "  python scripts/sweep.py --config=configs/sweep/beta.yaml --workers=2",
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
    parser.add_argument("--dry_run", action="store_true", help="list the trials and exit")
    args = parser.parse_args(argv)

    spec = load_sweep(args.config)
    trials = expand(spec)
    workdir = Path(args.workdir).absolute()
    if args.dry_run:
        for trial in trials:
            action = runner.trial_action(workdir / "checkpoints" / trial.run_id)
            print(f"{trial.run_id}\t{action}\t{' '.join(trial.overrides)}")
        return 0
    envs = runner.slot_envs(args.workers, runner.visible_gpus(args.devices))
    folder = runner.sweep_dir(workdir, spec)
    print(f"sweep {spec.name}: {len(trials)} trials, {args.workers} workers, record in {folder}")
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
        done: list[runner.Outcome] = []

        def report(outcome: runner.Outcome) -> None:
            done.append(outcome)
            took = f", {outcome.seconds:.1f} s" if outcome.action != "skipped" else ""
            error = f": {outcome.error}" if outcome.error else ""
            print(
                f"[{len(done)}/{len(trials)}] {outcome.run_id}: {outcome.status} "
                f"({outcome.action}{took}){error}",
                flush=True,
            )

        outcomes = runner.run_trials(spec, trials, workdir, envs, report)
        rows = summary.collect_rows(spec, trials, outcomes, workdir)
        summary.write_summary(spec, rows, folder)
        plotted = summary.plot(spec, rows, folder / "summary.png")
    bad = [o for o in outcomes.values() if o.status != "completed"]
    print(
        f"sweep {spec.name}: {len(trials) - len(bad)}/{len(trials)} completed; "
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
