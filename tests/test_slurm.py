"""Sweeps and multi-process training on a real SLURM cluster (tests/slurm_cluster.py).

Skipped, with the reason, where SLURM's packages are missing or the user is not root. One
cluster serves the whole module; its jobs run the tiny baseline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from src.experiments import slurm
from src.experiments.spec import expand, load_sweep
from src.utils.config import parse_override
from tests.helpers import (
    BASELINE,
    REPO,
    TINY,
    assert_same_arrays,
    read_state,
    run_script,
    script_env,
    without_timings,
)
from tests.slurm_cluster import SlurmCluster, skip_reason

RTOL = 1e-5  # tests/test_parallel.py: float reassociation of the cross-device mean only
# 8 epochs of the tiny baseline: 360 steps, a few seconds after the first checkpoint (step 20),
# so that a requeue lands in the middle of the run.
OVERRIDES = {**dict(parse_override(o) for o in TINY), "training.epochs": 8}
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    started = SlurmCluster().start()
    try:
        yield started
    finally:
        started.stop()


def write_sweep(folder: Path, name: str, launcher: dict | None = None, **fields) -> Path:
    body = {
        "name": name,
        "experiment": str(BASELINE),
        "overrides": OVERRIDES,
        "grid": {"training.kl.beta": [0.5, 1.0]},
        "launcher": {"poll_s": 1, "time_min": 20, **(launcher or {})},
        **fields,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def sweep(cluster: SlurmCluster, path: Path, workdir: Path, *flags: str):
    return run_script(
        "sweep.py",
        f"--config={path}",
        f"--workdir={workdir}",
        "--launcher=slurm",
        *flags,
        timeout=TIMEOUT_S,
        env=cluster.env,
    )


def all_jobs(cluster: SlurmCluster) -> list[str]:
    """Every job the controller lists, ended ones included."""
    return cluster.run("squeue", "-h", "-r", "-t", "all", "-o", "%i").split()


def metrics(workdir: Path, run_id: str) -> dict:
    return json.loads((workdir / "checkpoints" / run_id / "metrics.json").read_text())


def wait_for_checkpoint(run_dir: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = run_dir / "model_last"
        if last.is_dir() and any(p.name.isdigit() for p in last.iterdir()):
            return
        time.sleep(0.1)
    raise AssertionError(f"no model_last step in {run_dir}")


def release(cluster: SlurmCluster, job: str, timeout: float = 60) -> None:
    """Starts a requeued job now: SLURM holds one back for two minutes (BeginTime)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "BeginTime" in cluster.run("squeue", "-h", "-j", job, "-o", "%r"):
            cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job} was not requeued")


@pytest.fixture(scope="module")
def finished(cluster, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """A 2-trial sweep run to its end on the cluster: (sweep file, workdir, the run)."""
    folder = tmp_path_factory.mktemp("finished")
    path = write_sweep(folder, "two")
    return path, folder / "work", sweep(cluster, path, folder / "work")


def test_a_two_trial_sweep_is_one_job_array_and_its_rerun_submits_nothing(cluster, finished):
    path, work, result = finished
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2/2 completed" in result.stdout
    spec = load_sweep(path)
    trials = expand(spec)
    jobs = slurm.recorded_jobs(slurm.sweep_folder(work, spec))
    arrays = {jobs[t.run_id].split("_")[0] for t in trials}
    assert len(arrays) == 1 and sorted(jobs[t.run_id] for t in trials) == [
        f"{next(iter(arrays))}_{k}" for k in range(2)
    ]
    for k, trial in enumerate(trials):
        assert metrics(work, trial.run_id)["status"] == "completed"
        prov = json.loads((work / "checkpoints" / trial.run_id / "provenance.json").read_text())
        assert prov["scheduler"]["array_job_id"] == next(iter(arrays))
        assert prov["scheduler"]["array_task_id"] == str(k)
        assert prov["scheduler"]["node"] == cluster.node
        assert prov["scheduler"]["partition"] == "debug"
    rows = (work / "sweeps" / "two" / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",completed," in r for r in rows[1:])
    index = (work / "runs.csv").read_text()
    assert all(f"{t.run_id}," in index for t in trials) and index.count(",completed,") == 2
    before = all_jobs(cluster)
    again = sweep(cluster, path, work)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "submitted 2" not in again.stdout and "2/2 completed" in again.stdout
    assert all_jobs(cluster) == before  # nothing new on the cluster


def test_a_failing_trial_job_is_reported_and_the_others_finish(cluster, finished, tmp_path):
    """Beside the completed trial 1 of `finished` (skipped), a trial whose train.py refuses its
    config (a negative beta) fails in its job; the sweep reports it and exits 1."""
    path, work, _ = finished
    bad = write_sweep(tmp_path, "two", grid={"training.kl.beta": [0.5, -1.0]})
    result = sweep(cluster, bad, work)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(": completed (skipped)" in line for line in lines)
    failed = [line for line in lines if ": failed (new" in line]
    assert len(failed) == 1 and "training.kl.beta" in failed[0], result.stdout
    assert "1/2 completed" in result.stdout


def test_a_requeued_trial_resumes_bit_exactly(cluster, finished, tmp_path):
    """`scontrol requeue` mid-run: SIGTERM saves model_last, the requeued job resumes it and
    ends bit for bit as the uninterrupted run of the same trial."""
    path, reference, _ = finished
    spec = load_sweep(path)
    trial = expand(spec)[0]
    detached = sweep(cluster, path, tmp_path, "--trials=1", "--detach")
    assert detached.returncode == 0, detached.stdout + detached.stderr
    assert "--cancel" in detached.stdout  # says how to follow and cancel
    job = slurm.recorded_jobs(slurm.sweep_folder(tmp_path, spec))[trial.run_id]
    wait_for_checkpoint(tmp_path / "checkpoints" / trial.run_id)
    cluster.run("scontrol", "requeue", job)
    release(cluster, job)
    waited = sweep(cluster, path, tmp_path, "--trials=1")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "[follow]" in waited.stdout and "submitted 1" not in waited.stdout  # not resubmitted
    log = slurm.log_path(tmp_path, spec, trial.run_id).read_text()
    assert "interrupted by SIGTERM" in log and "--resume" in log, log
    got, ref = metrics(tmp_path, trial.run_id), metrics(reference, trial.run_id)
    assert got["status"] == "completed"
    assert without_timings(got["history"]) == without_timings(ref["history"])
    step, state = read_state(tmp_path / "checkpoints" / trial.run_id / "model_last")
    ref_step, ref_state = read_state(reference / "checkpoints" / trial.run_id / "model_last")
    assert step == ref_step
    assert_same_arrays(state, ref_state)
    prov = json.loads((tmp_path / "checkpoints" / trial.run_id / "provenance.json").read_text())
    assert prov["resumes"][-1]["scheduler"]["restart_count"] == "1"


def test_ctrl_c_leaves_the_jobs_running_and_cancel_ends_them(cluster, tmp_path, monkeypatch):
    for name, value in cluster.env.items():
        monkeypatch.setenv(name, value)  # for slurm.job_states in this process
    # The jobs wait in their setup lines: nothing is trained.
    path = write_sweep(tmp_path, "held", launcher={"setup": ["sleep 300"]})
    cmd = [sys.executable, str(REPO / "scripts" / "sweep.py"), f"--config={path}"]
    cmd += [f"--workdir={tmp_path}", "--launcher=slurm"]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**script_env(), **cluster.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("[start]"):  # a job is running
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, "".join(seen) + out + err
    assert "keep running" in err and "--status" in err and "--cancel" in err
    spec = load_sweep(path)
    jobs = slurm.recorded_jobs(slurm.sweep_folder(tmp_path, spec))
    assert len(jobs) == 2 and all(st.alive for st in slurm.job_states(jobs.values()).values())
    status = sweep(cluster, path, tmp_path, "--status")
    assert status.returncode == 0 and status.stdout.count("run not started") == 2
    assert "RUNNING" in status.stdout
    cancelled = sweep(cluster, path, tmp_path, "--cancel")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled 2 job(s)" in cancelled.stdout
    assert not any(job.split("|")[0] in jobs.values() for job in cluster.jobs())
    assert cluster.jobs() == []  # no job left at all


def test_two_srun_tasks_form_one_jax_cluster_equal_to_one_process(cluster, tmp_path):
    """`srun -n 2 train.py`: parallel.distributed auto starts one JAX cluster from SLURM's
    environment; process 0 writes the record; the numbers equal one process's."""
    args = [f"--config={BASELINE}", f"--workdir={tmp_path}", *(f"--config.{o}" for o in TINY)]
    two = subprocess.run(
        ["srun", "-n", "2", f"--chdir={REPO}", sys.executable, "scripts/train.py", *args]
        + ["--run_id=two"],
        env={**script_env(), **cluster.env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert two.returncode == 0, two.stdout + two.stderr
    one = run_script("train.py", *args, "--run_id=one", timeout=TIMEOUT_S)
    assert one.returncode == 0, one.stderr
    prov = json.loads((tmp_path / "checkpoints" / "two" / "provenance.json").read_text())
    assert prov["devices"]["process_count"] == 2 and prov["devices"]["count"] == 2
    assert prov["scheduler"]["ntasks"] == "2"
    assert len(list((tmp_path / "logs" / "two").glob("events.out.tfevents.*"))) == 1
    got, ref = metrics(tmp_path, "two"), metrics(tmp_path, "one")
    assert len(got["history"]) == len(ref["history"])
    for a, b in zip(got["history"], ref["history"], strict=True):
        assert (a["split"], a["step"]) == (b["split"], b["step"])
        for key in ("loss", "elbo"):
            if key in b:
                np.testing.assert_allclose(a[key], b[key], rtol=RTOL)


@pytest.mark.slow
def test_a_trial_at_its_time_limit_is_requeued_by_submitit_and_resumes(cluster, tmp_path):
    """A 1-minute time limit: SLURM signals USR2 signal_delay_s before it, submitit's handler
    stops train.py (model_last saved) and requeues; the run ends as an uninterrupted one."""
    overrides = {**OVERRIDES, "training.epochs": 100}
    launcher = {"time_min": 1, "signal_delay_s": 15, "max_requeues": 10}
    path = write_sweep(tmp_path, "limit", launcher=launcher, overrides=overrides)
    spec = load_sweep(path)
    trial = expand(spec)[0]
    cmd = [sys.executable, str(REPO / "scripts" / "sweep.py"), f"--config={path}"]
    cmd += [f"--workdir={tmp_path / 'slurm'}", "--launcher=slurm", "--trials=1"]
    env = {**script_env(), **cluster.env}
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            for line in cluster.jobs():  # start requeued jobs at once (see release)
                job, state = line.split("|")
                if state == "PENDING" and "BeginTime" in cluster.run(
                    "squeue", "-h", "-j", job, "-o", "%r"
                ):
                    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
            time.sleep(1)
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    assert proc.returncode == 0, out
    log = slurm.log_path(tmp_path / "slurm", spec, trial.run_id).read_text()
    assert "interrupted by SIGTERM" in log and "--resume" in log, log
    local = run_script(
        "sweep.py", f"--config={path}", f"--workdir={tmp_path / 'local'}", "--trials=1"
    )
    assert local.returncode == 0, local.stderr
    got, ref = metrics(tmp_path / "slurm", trial.run_id), metrics(tmp_path / "local", trial.run_id)
    assert without_timings(got["history"]) == without_timings(ref["history"])
    _, state = read_state(tmp_path / "slurm" / "checkpoints" / trial.run_id / "model_last")
    _, ref_state = read_state(tmp_path / "local" / "checkpoints" / trial.run_id / "model_last")
    assert_same_arrays(state, ref_state)


@pytest.mark.slow
def test_a_two_task_trial_is_one_jax_cluster(cluster, finished, tmp_path):
    """tasks_per_trial: 2 runs the trial as two processes of one JAX cluster; its numbers equal
    the one-process trial's."""
    path, reference, _ = finished
    two = write_sweep(tmp_path, "two", launcher={"tasks_per_trial": 2})  # same trials as `path`
    result = sweep(cluster, two, tmp_path, "--trials=1")
    assert result.returncode == 0, result.stdout + result.stderr
    trial = expand(load_sweep(path))[0]
    prov = json.loads((tmp_path / "checkpoints" / trial.run_id / "provenance.json").read_text())
    assert prov["devices"]["process_count"] == 2
    got, ref = metrics(tmp_path, trial.run_id), metrics(reference, trial.run_id)
    for a, b in zip(got["history"], ref["history"], strict=True):
        if "loss" in b:
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=RTOL)
    assert os.path.isfile(slurm.log_path(tmp_path, load_sweep(two), trial.run_id, task=1))
