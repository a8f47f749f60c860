"""A sweep's trials as SLURM jobs, submitted through submitit (`sweep.py --launcher=slurm`).

Every trial stays the local runner's `python scripts/train.py ...` process (runner.train_command):
the job runs TrialJob, which starts it and waits. The trials one invocation submits form one
job array (submitit's `executor.batch()`). Their job ids are kept in
<workdir>/sweeps/<name>/slurm/jobs.json, next to submitit's files and the jobs' own logs;
train.py's output goes to <workdir>/sweeps/<name>/logs/<run_id>.log, as with the local runner.

What a (re-)run does with each selected trial:

    completed on disk                 -> skipped (stale if the sweep now gives another config)
    its recorded job still alive      -> followed, not submitted again
    its run lock held (a writer runs) -> busy, not submitted
    otherwise                         -> submitted; the job itself picks new, --resume or
                                         --overwrite from the run folder when it starts

A job's state comes from `squeue -t all` (it lists ended jobs for the cluster's MinJobAge
seconds; a job it no longer lists has ended), not from submitit's Job.state, which reads
`sacct` and so needs the cluster's accounting database. A trial's outcome comes from its run
record (metrics.json), as with the local runner.

Time limits and preemption: submitit submits with --signal=USR2@signal_delay_s and, on that
signal, calls TrialJob.checkpoint in the job: it stops train.py as SIGTERM does (model_last is
saved, the run recorded `interrupted`) and returns the same TrialJob, which submitit requeues
(`scontrol requeue`, at most max_requeues times); the requeued job finds model_last and runs
`train.py --resume`, which continues bit for bit. A job that SLURM requeues itself (preemption
with PreemptMode=REQUEUE, `scontrol requeue`) gets SIGTERM, which train.py handles the same way.
SLURM signals every process of the job, so train.py is started with USR2 ignored (SIG_IGN is
kept across exec): its default action would end train.py without a save.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from src.experiments import runner
from src.experiments.launcher import SlurmSettings
from src.experiments.runner import Outcome
from src.experiments.spec import REPO_ROOT, SweepSpec, Trial
from src.training.run.rundir import holder, run_paths
from src.utils.errors import StorageError, UserError
from src.utils.io import atomic_write_json, read_json

JOBS_FILE = "jobs.json"
PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"  # submitit's variable; USR2 when unset
CHILD_POLL_S = 0.5  # how often a job looks whether its train.py has ended
ACTION_WAIT_S = 600.0  # how long task k > 0 of a multi-task trial waits for task 0's decision
CANCEL_WAIT_S = 120.0  # how long --cancel waits for the cancelled jobs to end
HEARTBEAT_S = 300.0  # a line on the running jobs at least this often while waiting
# squeue states of a job that has ended; any other listed state is alive (pending, running,
# completing, requeued, suspended, ...).
ENDED = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)
GONE = "ENDED"  # the state of a job squeue no longer lists


class SchedulerError(UserError):
    """SLURM's commands are missing or refused a request (exit status 2)."""


class JobState(NamedTuple):
    state: str  # squeue's %T, or GONE
    time_left: str  # squeue's %L: 59:58, 1-00:00:00, UNLIMITED, INVALID (not started)
    node: str
    partition: str

    @property
    def alive(self) -> bool:
        return self.state != GONE and self.state not in ENDED


def sweep_folder(workdir: Path, spec: SweepSpec) -> Path:
    """submitit's files, the jobs' logs and jobs.json."""
    return runner.sweep_dir(workdir, spec) / "slurm"


def log_path(workdir: Path, spec: SweepSpec, run_id: str, task: int = 0) -> Path:
    """train.py's output: the local runner's log for task 0, one file per further task."""
    name = f"{run_id}.log" if task == 0 else f"{run_id}.task{task}.log"
    return runner.sweep_dir(workdir, spec) / "logs" / name


def _preempt_signal() -> signal.Signals:
    return signal.Signals[f"SIG{os.environ.get(PREEMPT_SIGNAL_ENV, 'USR2')}"]


def _ignore_preempt_signal() -> None:
    """preexec_fn of train.py: SIG_IGN for submitit's signal (inherited across exec)."""
    signal.signal(_preempt_signal(), signal.SIG_IGN)


def run_status(run_dir: Path) -> str | None:
    """The status in the run's metrics.json; None if there is none (or it does not read)."""
    try:
        return read_json(run_dir / "metrics.json").get("status")
    except (StorageError, FileNotFoundError):
        return None


class TrialFailed(Exception):
    """The trial's train.py ended without completing the run (reported by the job)."""


class TrialJob:
    """What a trial's job runs (pickled by submitit): train.py, chosen from the run folder."""

    def __init__(self, spec: SweepSpec, trial: Trial, workdir: Path) -> None:
        self.spec, self.trial, self.workdir = spec, trial, Path(workdir)
        self.proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "proc": None}  # a process does not travel to the next job

    def _action(self, run_dir: Path, task: int, tasks: int) -> str:
        """new | resume | restart | skip, from the run folder now. In a multi-task trial task
        0 decides and the others read its decision: they look a moment later, when task 0's
        train.py may have changed the folder."""
        if tasks == 1:
            return runner.trial_action(run_dir)
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        note = run_dir.parent / f".{self.trial.run_id}.{os.environ['SLURM_JOB_ID']}.{restarts}"
        if task == 0:
            action = runner.trial_action(run_dir)
            note.parent.mkdir(parents=True, exist_ok=True)
            note.with_suffix(".tmp").write_text(action)
            note.with_suffix(".tmp").rename(note)
            return action
        deadline = time.monotonic() + ACTION_WAIT_S
        while not note.is_file():
            if time.monotonic() > deadline:
                raise TrialFailed(f"task 0 of {self.trial.run_id} decided nothing in {note}")
            time.sleep(CHILD_POLL_S)
        return note.read_text()

    def __call__(self) -> str:
        task = int(os.environ.get("SLURM_PROCID", "0"))
        tasks = int(os.environ.get("SLURM_NTASKS", "1"))
        run_dir = run_paths(self.workdir, self.trial.run_id).run_dir
        action = self._action(run_dir, task, tasks)
        if action == "skip":
            return "completed"
        cmd = runner.train_command(self.spec, self.trial, self.workdir, action)
        log = log_path(self.workdir, self.spec, self.trial.run_id, task)
        log.parent.mkdir(parents=True, exist_ok=True)
        job = os.environ.get("SLURM_JOB_ID")
        where = f"  # SLURM job {job}, task {task}" if job else ""
        with log.open("ab") as f:
            f.write(f"$ {shlex.join(cmd)}{where}\n".encode())
            f.flush()
            start = f.tell()
            self.proc = subprocess.Popen(
                cmd,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env={**os.environ, "SWEEP_NAME": self.spec.name},
                preexec_fn=_ignore_preempt_signal,
            )
            # poll(), not wait(): checkpoint() runs in a signal handler on this thread and
            # polls the same process; wait() would hold the lock that poll() needs.
            while self.proc.poll() is None:
                time.sleep(CHILD_POLL_S)
        status = run_status(run_dir)
        if self.proc.returncode == 0 and (task > 0 or status == "completed"):
            return "completed"
        line = runner._last_line(log, start)
        raise TrialFailed(f"{self.trial.run_id}: exit {self.proc.returncode}, {status}: {line}")

    def checkpoint(self) -> Any:
        """submitit's hook on the time-limit/preemption signal (task 0 only): stop train.py as
        SIGTERM does (it saves model_last and records the run interrupted), then requeue this
        same job. In a multi-task trial the hook leaves train.py to the requeue's SIGTERM, which
        reaches every task at once: stopping task 0 alone would leave its collective save
        waiting for tasks that go on training."""
        import submitit

        proc = self.proc
        tasks = int(os.environ.get("SLURM_NTASKS", "1"))
        if proc is not None and proc.poll() is None and tasks == 1:
            proc.send_signal(signal.SIGTERM)
            while proc.poll() is None:
                time.sleep(0.1)
        return submitit.helpers.DelayedSubmission(self)


# --- the submitting side -------------------------------------------------------------------


def check_commands() -> None:
    """A SchedulerError unless SLURM's client commands are on PATH."""
    missing = [c for c in ("sbatch", "squeue", "scancel") if shutil.which(c) is None]
    if missing:
        raise SchedulerError(
            f"--launcher=slurm: {', '.join(missing)} not found; run the sweep on a machine "
            "of the SLURM cluster (a login node), or use --launcher=local"
        )


def executor(folder: Path, settings: SlurmSettings, name: str, trials: int) -> Any:
    """submitit's SlurmExecutor with the launcher settings (configs/launcher/slurm.yaml)."""
    import submitit

    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_requeues)
    params: dict[str, Any] = {
        "job_name": f"sweep-{name}",
        "time": settings.time_min,
        "nodes": settings.nodes_per_trial,
        "ntasks_per_node": settings.tasks_per_trial // settings.nodes_per_trial,
        "cpus_per_task": settings.cpus_per_task,
        "signal_delay_s": settings.signal_delay_s,
        "array_parallelism": settings.array_parallelism or max(trials, 1),
        "stderr_to_stdout": True,
        # The job's python finds `src` (and train.py its relative paths) from the repository.
        "setup": [f"cd {shlex.quote(str(REPO_ROOT))}", *settings.setup],
        "additional_parameters": {"requeue": True, **settings.sbatch},
    }
    if settings.partition:
        params["partition"] = settings.partition
    if settings.gpus_per_task:
        params["gpus_per_task"] = settings.gpus_per_task
    if settings.mem_gb:
        params["mem"] = f"{settings.mem_gb}GB"
    ex.update_parameters(**params)
    return ex


def submit(
    spec: SweepSpec, trials: Sequence[Trial], workdir: Path, settings: SlurmSettings
) -> dict[str, str]:
    """Submits the trials as one job array; returns run id -> job id ('12_0')."""
    folder = sweep_folder(workdir, spec)
    ex = executor(folder, settings, spec.name, len(trials))
    try:
        with ex.batch():
            jobs = [ex.submit(TrialJob(spec, t, workdir)) for t in trials]
    except subprocess.CalledProcessError as e:
        raise SchedulerError(
            f"sbatch refused the sweep's jobs (exit {e.returncode}; its message is above); "
            f"check the launcher settings of {spec.path}"
        ) from None
    ids = {t.run_id: str(job.job_id) for t, job in zip(trials, jobs, strict=True)}
    record_jobs(folder, ids)
    return ids


def recorded_jobs(folder: Path) -> dict[str, str]:
    """run id -> the last job id submitted for it."""
    path = folder / JOBS_FILE
    return dict(read_json(path)) if path.is_file() else {}


def record_jobs(folder: Path, ids: Mapping[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / JOBS_FILE, {**recorded_jobs(folder), **ids})


def job_states(job_ids: Iterable[str]) -> dict[str, JobState]:
    """job id -> its state, for the given ids (GONE for those squeue does not list)."""
    wanted = list(job_ids)
    if not wanted:
        return {}
    out = subprocess.run(
        ["squeue", "--me", "-h", "-r", "-t", "all", "-o", "%i|%T|%L|%N|%P"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SchedulerError(f"squeue failed (exit {out.returncode}): {last}")
    listed: dict[str, JobState] = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 5:
            listed[parts[0]] = JobState(*parts[1:])
    gone = JobState(GONE, "", "", "")
    return {job: listed.get(job, gone) for job in wanted}


def cancel(job_ids: Sequence[str], poll_s: float) -> list[str]:
    """scancel's the alive ones among job_ids and waits until they have ended; returns them."""
    alive = [job for job, st in job_states(job_ids).items() if st.alive]
    if not alive:
        return []
    out = subprocess.run(["scancel", *alive], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SchedulerError(f"scancel {' '.join(alive)} failed: {out.stderr.strip()}")
    deadline = time.monotonic() + CANCEL_WAIT_S
    while any(st.alive for st in job_states(alive).values()):
        if time.monotonic() > deadline:
            raise SchedulerError(f"jobs {' '.join(alive)} were cancelled but have not ended yet")
        time.sleep(min(poll_s, 1.0))
    return alive


class Plan(NamedTuple):
    outcomes: dict[str, Outcome]  # trials decided without a job: skipped, stale, busy
    follow: dict[str, str]  # run id -> alive job submitted earlier
    submit: list[Trial]  # trials to submit now


def plan(spec: SweepSpec, trials: Sequence[Trial], workdir: Path, folder: Path) -> Plan:
    """What this invocation does with each trial (see the module docstring)."""
    recorded = recorded_jobs(folder)
    states = job_states(recorded[t.run_id] for t in trials if t.run_id in recorded)
    outcomes: dict[str, Outcome] = {}
    follow: dict[str, str] = {}
    todo: list[Trial] = []
    for trial in trials:
        paths = run_paths(workdir, trial.run_id)
        job = recorded.get(trial.run_id)
        if job is not None and states[job].alive:
            follow[trial.run_id] = job
        elif runner.trial_action(paths.run_dir) == "skip":
            outcomes[trial.run_id] = runner.skipped_outcome(spec, trial, paths.run_dir)
        elif (pid := holder(paths)) is not None:
            outcomes[trial.run_id] = Outcome(
                trial.run_id,
                "skipped",
                "busy",
                f"run {trial.run_id} is in use by process {pid}; run the sweep again once it ends",
                0.0,
            )
        else:
            todo.append(trial)
    return Plan(outcomes, follow, todo)


def ended_outcome(
    workdir: Path, spec: SweepSpec, run_id: str, job: str, state: str, label: str, seconds: float
) -> Outcome:
    """A trial whose job has ended, from its run record (the job state names the cause)."""
    status = run_status(run_paths(workdir, run_id).run_dir)
    if status == "completed":
        return Outcome(run_id, label, "completed", "", seconds)
    log = log_path(workdir, spec, run_id)
    line = runner._last_line(log, 0) if log.is_file() else "(no log: the job did not start)"
    result = "interrupted" if status == "interrupted" else "failed"
    return Outcome(run_id, label, result, f"job {job} {state}: {line}", seconds)


def _describe(job: str, st: JobState) -> str:
    where = f" on {st.node}" if st.node and st.state == "RUNNING" else ""
    left = f", {st.time_left} left" if st.state == "RUNNING" and st.time_left else ""
    return f"job {job} {st.state}{where}{left}"


def wait(
    spec: SweepSpec,
    trials: Mapping[str, Trial],
    jobs: Mapping[str, str],
    labels: Mapping[str, str],
    workdir: Path,
    poll_s: float,
    on_start: Callable[[Trial, str, Path], None],
    on_done: Callable[[Outcome], None],
) -> dict[str, Outcome]:
    """Follows the jobs (run id -> job id) until all have ended, printing each state change;
    returns run id -> outcome. on_start gets each trial whose job starts running."""
    pending = dict(jobs)
    seen: dict[str, str] = {}
    started: dict[str, float] = {}
    outcomes: dict[str, Outcome] = {}
    last_line = time.monotonic()
    while pending:
        states = job_states(pending.values())
        for run_id, job in list(pending.items()):
            st = states[job]
            if st.state != seen.get(run_id):
                seen[run_id] = st.state
                last_line = time.monotonic()
                if st.state == "RUNNING" and run_id not in started:
                    started[run_id] = time.monotonic()
                    on_start(trials[run_id], _describe(job, st), log_path(workdir, spec, run_id))
                elif st.alive:
                    print(f"[{st.state.lower()}] {run_id}: {_describe(job, st)}", flush=True)
            if not st.alive:
                seconds = time.monotonic() - started.get(run_id, time.monotonic())
                outcome = ended_outcome(
                    workdir, spec, run_id, job, st.state, labels[run_id], seconds
                )
                outcomes[run_id] = outcome
                on_done(outcome)
                del pending[run_id]
        if pending and time.monotonic() - last_line > HEARTBEAT_S:
            last_line = time.monotonic()
            print(
                "[waiting] "
                + "; ".join(f"{r}: {_describe(j, states[j])}" for r, j in pending.items()),
                flush=True,
            )
        if pending:
            time.sleep(poll_s)
    return outcomes


def status_lines(
    trials: Sequence[Trial], positions: Mapping[str, int], workdir: Path, folder: Path
) -> list[str]:
    """--status: one line per trial: position, run id, job, its state, the run's status."""
    recorded = recorded_jobs(folder)
    states = job_states(recorded[t.run_id] for t in trials if t.run_id in recorded)
    lines = []
    for trial in trials:
        job = recorded.get(trial.run_id)
        state = _describe(job, states[job]) if job is not None else "no job"
        run = run_status(run_paths(workdir, trial.run_id).run_dir) or "not started"
        lines.append(f"{positions[trial.run_id]}\t{trial.run_id}\t{state}\trun {run}")
    return lines


def follow_hint(command: str, jobs: Iterable[str], folder: Path) -> str:
    """How to follow, wait for or cancel jobs left running; command is the sweep's own."""
    return (
        f"the jobs keep running ({', '.join(jobs)}). Follow them with `{command} --status` "
        f"(or squeue --me; train.py's output in {folder.parent / 'logs'}), wait for them with "
        f"`{command}`, cancel them with `{command} --cancel`"
    )


def announce(ids: Mapping[str, str], folder: Path) -> None:
    if not ids:
        return
    arrays = sorted({job.split("_")[0] for job in ids.values()})
    kind = "job array" if any("_" in job for job in ids.values()) else "job"
    print(
        f"submitted {len(ids)} trial(s) as SLURM {kind} {', '.join(arrays)}; "
        f"submitit files and job logs in {folder}",
        flush=True,
    )
