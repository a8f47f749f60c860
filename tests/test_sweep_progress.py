"""A sweep's console (a line per trial start and end, the time left) and running a subset of
its trials (--trials, --match)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from src.experiments import runner
from src.experiments.cli import Progress, _prior_seconds, duration, select_trials
from src.experiments.spec import expand, load_sweep
from src.utils.config import parse_override
from src.utils.errors import UserError
from tests.helpers import BASELINE, TINY, run_script

ONE_EPOCH = {**dict(parse_override(o) for o in TINY), "training.epochs": 1}


def _sweep(folder: Path, **fields) -> Path:
    path = folder / "p.yaml"
    body = {"name": "p", "experiment": str(BASELINE), **fields}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _trials(tmp_path: Path):
    return expand(load_sweep(_sweep(tmp_path, grid={"training.kl.beta": [0.5, 2.0]}, seeds=[1, 2])))


def test_select_trials_by_position_and_run_id(tmp_path: Path):
    trials = _trials(tmp_path)
    ids = [t.run_id for t in trials]
    assert [t.run_id for t in select_trials(trials, None, None)] == ids
    assert [t.run_id for t in select_trials(trials, "4,1-2", None)] == [ids[0], ids[1], ids[3]]
    assert [t.run_id for t in select_trials(trials, None, "seed2")] == [ids[1], ids[3]]
    assert [t.run_id for t in select_trials(trials, "1-3", "beta2.0")] == [ids[2]]
    with pytest.raises(UserError, match="--trials=5: 5 is not within 1-4"):
        select_trials(trials, "5", None)
    with pytest.raises(UserError, match="expected positions and ranges"):
        select_trials(trials, "a-b", None)
    with pytest.raises(UserError, match="--match=seed9: no selected trial"):
        select_trials(trials, None, "seed9")


def test_durations_and_estimates_read_plainly():
    assert [duration(s) for s in (0.4, 45, 190, 7300)] == [
        "0 s",
        "45 s",
        "3 min 10 s",
        "2 h 01 min",
    ]
    progress = Progress(total=5, to_run={"a", "b", "c", "d"}, workers=2, prior=[])
    assert progress.header() == "4 to run, 1 done already; estimate after the first trial"
    with_prior = Progress(total=2, to_run={"a", "b"}, workers=1, prior=[30.0])
    assert with_prior.header().startswith("2 to run; about 1 min 00 s left (30 s per trial, 1 ")
    progress.taken = [10.0, 30.0]  # 20 s per trial; 3 left over 2 workers
    assert progress.estimate(3) == "about 30 s left (20 s per trial, this sweep's trials so far)"
    assert progress.estimate(0) == "nothing left to run"


def test_a_subset_of_a_sweep_runs_with_progress_and_the_summary_lists_all(tmp_path: Path):
    sweep = _sweep(tmp_path, overrides=ONE_EPOCH, grid={"training.kl.beta": [0.5, 2.0]})
    work = tmp_path / "work"
    trials = expand(load_sweep(sweep))
    args = (f"--config={sweep}", f"--workdir={work}", "--devices=none")

    listing = run_script("sweep.py", *args, "--dry_run", timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert [line.split("\t")[:3] for line in listing.stdout.splitlines()] == [
        ["1", trials[0].run_id, "new"],
        ["2", trials[1].run_id, "new"],
    ]
    bad = run_script("sweep.py", *args, "--trials=3", timeout=60)
    assert bad.returncode == 2 and "--trials=3: 3 is not within 1-2" in bad.stderr
    assert not work.exists()

    result = run_script("sweep.py", *args, "--match=beta2.0")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sweep p: 2 trials (1 of 2 selected), 1 worker, record in ")
    assert lines[0].endswith("; 1 to run; estimate after the first trial")
    log = work / "sweeps" / "p" / "logs" / f"{trials[1].run_id}.log"
    assert lines[1] == f"[start] {trials[1].run_id} (new), log {log}"
    assert lines[2].startswith(f"[1/1] {trials[1].run_id}: completed (new, ")
    assert lines[2].endswith("; nothing left to run")
    assert lines[3].startswith("sweep p: 1/1 selected trials completed; ")
    assert "\x1b" not in result.stdout and "\r" not in result.stdout

    with (work / "sweeps" / "p" / "summary.csv").open(newline="") as f:
        rows = {r["run_id"]: r["status"] for r in csv.DictReader(f)}
    assert rows == {trials[0].run_id: "not run", trials[1].run_id: "completed"}
    assert runner.trial_action(work / "checkpoints" / trials[0].run_id) == "new"

    # The next run of the whole sweep skips it and estimates from its time in runs.csv.
    again = run_script("sweep.py", *args, "--dry_run", "--trials=2", timeout=60)
    assert again.stdout.split("\t")[:3] == ["2", trials[1].run_id, "skip"]
    # runs.csv keeps whole seconds: a trial of under a second counts as 0 s, and still counts.
    (prior,) = _prior_seconds(trials, work)
    assert 0 <= prior < 300


def test_the_time_left_does_not_rise_when_a_worker_goes_idle(monkeypatch):
    """2 workers, 3 trials of 60 s: when the first ends, the third has just started and needs
    its whole minute alone; the estimate says so rather than half of it."""
    clock = [60.0]
    monkeypatch.setattr("src.experiments.cli.time.monotonic", lambda: clock[0])
    progress = Progress(total=3, to_run={"b", "c"}, workers=2, prior=[])
    progress.taken = [60.0]
    progress.running = {"b": 0.0, "c": 60.0}
    assert progress.estimate(2).startswith("about 1 min 00 s left")
    progress.running = {"c": 60.0}
    assert progress.estimate(1).startswith("about 1 min 00 s left")


def test_a_trial_end_is_printed_before_the_start_it_makes_room_for(tmp_path, monkeypatch):
    """One worker, two trials: the events come in the order end(1), start(2)."""
    events: list[str] = []
    trials = _trials(tmp_path)[:2]

    def fake_run_trial(spec, trial, workdir, log_dir, env, on_start):
        on_start(trial, "new", log_dir / f"{trial.run_id}.log")
        return runner.Outcome(trial.run_id, "new", "completed", "", 1.0)

    monkeypatch.setattr(runner, "run_trial", fake_run_trial)
    runner.run_trials(
        load_sweep(_sweep(tmp_path, grid={"training.kl.beta": [0.5, 2.0]}, seeds=[1, 2])),
        trials,
        tmp_path / "work",
        [{}],
        lambda outcome: events.append(f"end {outcome.run_id}"),
        lambda trial, action, log: events.append(f"start {trial.run_id}"),
    )
    first, second = (t.run_id for t in trials)
    assert events == [f"start {first}", f"end {first}", f"start {second}", f"end {second}"]
