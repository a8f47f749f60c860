"""--launcher=slurm without a cluster: the launcher section, the sbatch script submitit writes,
and a trial's job preempted and requeued through submitit's local executor."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from src.experiments import launcher, slurm
from src.experiments.spec import REPO_ROOT, expand, load_sweep
from src.utils.config import parse_override
from src.utils.errors import ConfigError
from tests.helpers import (
    BASELINE,
    TINY,
    assert_same_arrays,
    read_state,
    run_script,
    without_timings,
)

SWEEP_OVERRIDES = {**dict(parse_override(o) for o in TINY), "training.epochs": 8}


def write_sweep(folder: Path, name: str = "s", **fields) -> Path:
    body = {
        "name": name,
        "experiment": str(BASELINE),
        "overrides": SWEEP_OVERRIDES,
        "seeds": [3],
        **fields,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_the_schema_file_matches_the_settings():
    values = launcher.defaults()
    assert list(values) == list(launcher.SlurmSettings._fields)
    text = launcher.SCHEMA.read_text()
    for key in values:  # every key documented on its line
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{key}:"))
        assert "#" in line, key


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"partiton": "gpu"}, "unknown launcher key 'partiton'"),
        ({"time_min": "1h"}, "time_min must be an integer, got '1h'"),
        ({"time_min": 0}, "time_min must be >= 1"),
        ({"gpus_per_task": True}, "gpus_per_task must be an integer"),
        ({"setup": "module load cuda"}, "setup must be a list of shell lines"),
        ({"sbatch": {"qos": ["a"]}}, "sbatch must be a mapping option: value"),
        ({"tasks_per_trial": 3, "nodes_per_trial": 2}, "must be a multiple of nodes_per_trial"),
        ([1, 2], "launcher must be a mapping"),
    ],
)
def test_bad_launcher_sections_are_config_errors(tmp_path, section, message):
    with pytest.raises(ConfigError) as err:
        load_sweep(write_sweep(tmp_path, launcher=section))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_flags_override_the_section_over_the_defaults(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, launcher={"partition": "a", "time_min": 30}))
    rest, flags = launcher.split_flags(
        ["--config=x", "--launcher.partition=b", "--launcher.setup=[module load x]"]
    )
    assert rest == ["--config=x"]
    got = launcher.settings(spec.path, spec.launcher, flags)
    assert (got.partition, got.time_min, got.setup) == ("b", 30, ["module load x"])
    assert got.cpus_per_task == launcher.defaults()["cpus_per_task"]
    with pytest.raises(ConfigError, match="--launcher.time_min: time_min must be an integer"):
        launcher.settings(spec.path, spec.launcher, {"time_min": "soon"})
    with pytest.raises(ConfigError, match="--launcher.nodes: unknown launcher key"):
        launcher.settings(spec.path, spec.launcher, {"nodes": 2})


def test_the_sbatch_script_carries_the_settings(tmp_path):
    settings = launcher.settings(
        tmp_path / "s.yaml",
        {
            "partition": "gpu",
            "time_min": 30,
            "gpus_per_task": 1,
            "mem_gb": 16,
            "tasks_per_trial": 4,
            "nodes_per_trial": 2,
            "array_parallelism": 3,
            "signal_delay_s": 100,
            "sbatch": {"account": "proj", "exclusive": True},
            "setup": ["module load cuda/12.4"],
        },
        {},
    )
    ex = slurm.executor(tmp_path, settings, "beta", trials=5)
    ex.parameters["map_count"] = 5  # as executor.batch() sets it for a 5-trial array
    text = ex._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=30",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --mem=16GB",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --array=0-4%3",
        "#SBATCH --signal=USR2@100",
        "#SBATCH --account=proj",
        "#SBATCH --exclusive",
        "#SBATCH --requeue",
        "#SBATCH --job-name=sweep-beta",
        f"cd {REPO_ROOT}",
        "module load cuda/12.4",
    ):
        assert line in text.splitlines(), line


def test_slurm_flags_need_the_slurm_launcher(tmp_path):
    path = write_sweep(tmp_path)
    for flag in ("--detach", "--status", "--cancel", "--launcher.partition=gpu"):
        result = run_script("sweep.py", f"--config={path}", f"--workdir={tmp_path}", flag)
        assert result.returncode == 2, result.stderr
        assert "goes with --launcher=slurm" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    bad = run_script(
        "sweep.py",
        f"--config={path}",
        f"--workdir={tmp_path}",
        "--launcher=slurm",
        "--launcher.time_min=abc",
    )
    assert bad.returncode == 2 and "time_min must be an integer" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_without_slurm_commands_the_launcher_says_so(tmp_path):
    result = run_script(
        "sweep.py",
        f"--config={write_sweep(tmp_path)}",
        f"--workdir={tmp_path}",
        "--launcher=slurm",
        env={"PATH": str(Path(sys.executable).parent)},
    )
    assert result.returncode == 2
    assert "not found" in result.stderr and "--launcher=local" in result.stderr


def _wait_for_a_checkpoint(run_dir: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = run_dir / "model_last"
        if last.is_dir() and any(p.name.isdigit() for p in last.iterdir()):
            return
        time.sleep(0.1)
    raise AssertionError(f"no model_last step in {run_dir}")


def _descendants(pid: int) -> list[int]:
    """The processes below pid (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *_descendants(int(child))]
    return found


def test_a_preempted_trial_job_is_requeued_and_resumes_bit_exactly(tmp_path):
    """The job gets submitit's preemption signal (USR2): TrialJob.checkpoint stops train.py
    (model_last saved), submitit's local executor requeues the job, and it resumes the run."""
    import submitit

    spec = load_sweep(write_sweep(tmp_path))
    trial = expand(spec)[0]
    reference = tmp_path / "reference"
    slurm.TrialJob(spec, trial, reference)()  # uninterrupted, in this process's child
    work = tmp_path / "work"
    ex = submitit.LocalExecutor(folder=tmp_path / "submitit")
    ex.update_parameters(timeout_min=10)
    job = ex.submit(slurm.TrialJob(spec, trial, work))
    run_dir = work / "checkpoints" / trial.run_id
    _wait_for_a_checkpoint(run_dir)
    # The preemption signal to every process of the job, as SLURM's --signal sends it:
    # submitit's wrapper checkpoints and requeues; train.py ignores it.
    for pid in _descendants(int(job.job_id)):  # the local job id is its controller's PID
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR2)
    assert job.result() == "completed"
    log = slurm.log_path(work, spec, trial.run_id).read_text()
    assert "interrupted by SIGTERM" in log and "--resume" in log, log
    ref_dir = reference / "checkpoints" / trial.run_id
    ref, got = (json.loads((d / "metrics.json").read_text()) for d in (ref_dir, run_dir))
    assert got["status"] == "completed"
    assert without_timings(got["history"]) == without_timings(ref["history"])
    step_ref, state_ref = read_state(ref_dir / "model_last")
    step, state = read_state(run_dir / "model_last")
    assert step == step_ref
    assert_same_arrays(state, state_ref)


@pytest.mark.parametrize("tasks", [1, 2])
def test_the_checkpoint_hook_stops_train_py_only_in_a_one_task_trial(tmp_path, monkeypatch, tasks):
    """One task: SIGTERM to train.py, waited for, before the requeue. Several: the requeue's
    SIGTERM reaches all tasks at once, so the hook leaves train.py running."""
    monkeypatch.setenv("SLURM_NTASKS", str(tasks))
    spec = load_sweep(write_sweep(tmp_path))
    job = slurm.TrialJob(spec, expand(spec)[0], tmp_path)
    job.proc = subprocess.Popen(["sleep", "60"])
    try:
        again = job.checkpoint()
        assert again.function is job  # submitit requeues the same trial job
        assert (job.proc.poll() == -signal.SIGTERM) if tasks == 1 else job.proc.poll() is None
    finally:
        job.proc.kill()
        job.proc.wait()
