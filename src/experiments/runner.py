"""Running a sweep's trials: each one `python scripts/train.py ...` in its own process.

What happens to a trial is decided from its run directory alone, so re-running a sweep after
a crash, a Ctrl-C or a reboot continues where it stopped:

    no run directory              -> new      (train.py --config=... --run_id=...)
    metrics.json status completed -> skipped
    config.yaml + a model_last step -> resumed (train.py --resume --run_id=...)
    anything else (killed early)  -> restarted (train.py ... --overwrite)

Signals: SIGTERM, SIGINT or SIGHUP to the sweep is passed on to its running trials (each in
its own process group, so a terminal's Ctrl-C reaches them once, through the sweep), which save
model_last and stop; trials not yet started are not started; the sweep waits for the running
ones, writes its summary and exits 128 + signal number (`stopped_by`). A second signal is passed
on too: the trials exit at once, keeping their last complete checkpoint. A re-run resumes them.

A trial whose run folder another process holds (its writer lock, src/utils/rundir.py) is not
started: it is reported `busy` with that process's PID, and the next invocation decides again.
A failing trial is recorded with the last line of its log and the others go on.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

from src.experiments.spec import REPO_ROOT, SweepSpec, Trial
from src.training.run.rundir import holder, run_paths
from src.utils.config import config_hash, load_config
from src.utils.errors import ConfigError, RunDirError, StorageError, UserError
from src.utils.io import read_json

TRAIN_SCRIPT = REPO_ROOT / "scripts" / "train.py"
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Trials:
    """The running trial processes and the signal that stopped the sweep, if any."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen] = set()
        self.signum: int | None = None


_trials = _Trials()


def stopped_by() -> int | None:
    """The signal that stopped the last run_trials, or None."""
    return _trials.signum


def _forward(signum: int, frame: object) -> None:
    """Signal handler of run_trials: passes the signal on to the running trials."""
    first = _trials.signum is None
    _trials.signum = signum
    with _trials.lock:
        running = list(_trials.running)
    for proc in running:
        with suppress(OSError):  # it has just ended
            proc.send_signal(signum)
    if first:
        print(
            f"{signal.Signals(signum).name}: passed on to {len(running)} running trial(s), which "
            "save and stop; no new trial starts (send it again to stop them at once)",
            file=sys.stderr,
            flush=True,
        )


class Outcome(NamedTuple):
    run_id: str
    action: str  # new | resumed | restarted | skipped
    status: str  # completed | failed | interrupted | stale | busy
    error: str  # one line; empty when the trial completed
    seconds: float  # wall time of this invocation's process (0 when skipped)


def sweep_dir(workdir: str | Path, spec: SweepSpec) -> Path:
    return Path(workdir) / "sweeps" / spec.name


def trial_action(run_dir: Path) -> str:
    """new | skip | resume | restart, from what the trial left on disk."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return "new"
    metrics = run_dir / "metrics.json"
    if metrics.is_file() and _status(metrics) == "completed":
        return "skip"
    last = run_dir / "model_last"
    has_step = last.is_dir() and any(p.name.isdigit() for p in last.iterdir())
    if (run_dir / "config.yaml").is_file() and has_step:
        return "resume"
    return "restart"


def _status(metrics: Path) -> str | None:
    """The status in metrics.json; None when it does not read (train.py then says why)."""
    try:
        return read_json(metrics).get("status")
    except StorageError:
        return None


def expected_hash(spec: SweepSpec, trial: Trial) -> str | None:
    """The config hash the trial would run with now; None if its overrides are invalid."""
    try:
        return config_hash(load_config(spec.experiment, overrides=trial.overrides))
    except ConfigError:
        return None


def train_command(spec: SweepSpec, trial: Trial, workdir: Path, action: str) -> list[str]:
    base = [sys.executable, str(TRAIN_SCRIPT), f"--workdir={workdir}", f"--run_id={trial.run_id}"]
    if action == "resume":
        return [*base, "--resume"]  # a resumed run keeps its saved config
    extra = ["--overwrite"] if action == "restart" else []
    return [
        *base,
        f"--config={spec.experiment}",
        *extra,
        *(f"--config.{o}" for o in trial.overrides),
    ]


def visible_gpus(flag: str) -> list[str]:
    """Device ids to hand out: 'none', a list '0,1,2', or 'auto' (CUDA_VISIBLE_DEVICES or nvidia-smi)."""
    if flag == "none":
        return []
    if flag != "auto":
        ids = [d.strip() for d in flag.split(",") if d.strip()]
        if not ids:
            raise UserError(f"--devices={flag!r}: expected auto, none or ids like 0,1")
        return ids
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


def slot_envs(workers: int, devices: Sequence[str]) -> list[dict[str, str]]:
    """Extra environment per worker slot: disjoint GPU sets (round robin) when GPUs exist."""
    if not devices:
        return [{} for _ in range(workers)]
    if workers > len(devices):
        raise UserError(
            f"--workers={workers} exceeds the {len(devices)} GPUs ({','.join(devices)}); "
            "use at most one worker per GPU or --devices=none"
        )
    return [{"CUDA_VISIBLE_DEVICES": ",".join(devices[k::workers])} for k in range(workers)]


@contextmanager
def sweep_lock(folder: Path) -> Iterator[None]:
    """Refuses a second process on the same sweep (both would launch the same trials)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"sweep {folder} is already running in another process") from None
        yield
    finally:
        os.close(fd)


def _last_line(log: Path, start: int) -> str:
    """The last non-empty line the trial wrote in this invocation (its error, usually)."""
    with log.open("rb") as f:
        f.seek(start)
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else "(no output)"


def run_trial(
    spec: SweepSpec,
    trial: Trial,
    workdir: Path,
    log_dir: Path,
    env: dict[str, str],
    on_start: Callable[[Trial, str, Path], None] | None = None,
) -> Outcome:
    """Runs or skips one trial; never raises for a failing trial. on_start(trial, action, log)
    is called when its train.py process starts (not for a skipped trial)."""
    paths = run_paths(workdir, trial.run_id)
    run_dir = paths.run_dir
    pid = holder(paths)
    if pid is not None:  # what it left on disk is still changing: decide nothing now
        return Outcome(
            trial.run_id,
            "skipped",
            "busy",
            f"run {trial.run_id} is in use by process {pid}; run the sweep again once it ends",
            0.0,
        )
    action = trial_action(run_dir)
    if action != "skip" and _trials.signum is not None:
        name = signal.Signals(_trials.signum).name
        return Outcome(trial.run_id, "skipped", "interrupted", f"not started ({name})", 0.0)
    if action == "skip":
        recorded = read_json(run_dir / "metrics.json").get("config_hash")
        expected = expected_hash(spec, trial)
        if expected is not None and recorded != expected:
            return Outcome(
                trial.run_id,
                "skipped",
                "stale",
                f"completed with config {recorded}, but the sweep now gives {expected} "
                "(base experiment changed?); delete the run or rename the sweep",
                0.0,
            )
        return Outcome(trial.run_id, "skipped", "completed", "", 0.0)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{trial.run_id}.log"
    cmd = train_command(spec, trial, workdir, action)
    if on_start is not None:
        on_start(trial, action, log)
    tic = time.perf_counter()
    with log.open("ab") as f:
        f.write(f"$ {shlex.join(cmd)}\n".encode())
        f.flush()
        start_out = f.tell()
        proc = subprocess.Popen(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, "SWEEP_NAME": spec.name, **env},
            start_new_session=True,  # signals reach it once, passed on by the sweep
        )
        with _trials.lock:
            _trials.running.add(proc)
        if _trials.signum is not None:  # arrived while it was starting
            proc.send_signal(_trials.signum)
        try:
            proc.wait()
        finally:
            with _trials.lock:
                _trials.running.discard(proc)
    seconds = time.perf_counter() - tic
    label = {"new": "new", "resume": "resumed", "restart": "restarted"}[action]
    metrics = run_dir / "metrics.json"
    status = (_status(metrics) or "failed") if metrics.is_file() else "failed"
    if proc.returncode == 0 and status == "completed":
        return Outcome(trial.run_id, label, "completed", "", seconds)
    if status in ("completed", "running"):  # failed after its record, or killed before writing it
        status = "failed"
    error = f"exit {proc.returncode}: {_last_line(log, start_out)}"
    return Outcome(trial.run_id, label, status, error, seconds)


def run_trials(
    spec: SweepSpec,
    trials: Sequence[Trial],
    workdir: Path,
    envs: Sequence[dict[str, str]],
    on_done: Callable[[Outcome], None],
    on_start: Callable[[Trial, str, Path], None] | None = None,
) -> dict[str, Outcome]:
    """Runs trials with len(envs) processes at a time; returns run_id -> outcome. on_done gets
    each outcome as it comes, on_start each trial whose process starts (see run_trial).

    Each worker slot owns one environment (its device set, see slot_envs), handed to
    whichever trial it runs.
    """
    slots: queue.Queue[dict[str, str]] = queue.Queue()
    for env in envs:
        slots.put(env)
    log_dir = sweep_dir(workdir, spec) / "logs"

    def job(trial: Trial) -> Outcome:
        env = slots.get()
        try:
            return run_trial(spec, trial, workdir, log_dir, env, on_start)
        finally:
            slots.put(env)

    outcomes: dict[str, Outcome] = {}
    _trials.signum = None
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _forward) for sig in SIGNALS}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(envs))
    try:
        futures = [pool.submit(job, t) for t in trials]
        for future in concurrent.futures.as_completed(futures):
            outcome = future.result()
            outcomes[outcome.run_id] = outcome
            on_done(outcome)
    finally:
        # After a signal, running trials save and stop (they record `interrupted`) and queued
        # ones return at once; they run on the next invocation.
        pool.shutdown(wait=True, cancel_futures=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return outcomes
