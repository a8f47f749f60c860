"""Fault tolerance: bit-exact resume after SIGKILL/SIGTERM, broken checkpoints, NaN policy, I/O errors.

The killed runs are subprocesses, as in production; the reference run is in-process. All runs use
the tiny baseline (tests/helpers.py TINY), 88 steps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from src.training.loop import train_and_evaluate
from src.training.run.rundir import prepare, run_paths
from src.utils.config import load_config
from src.utils.errors import StorageError
from tests.helpers import (
    BASELINE,
    REPO,
    TINY,
    at_batch,
    inject_nan_at,
    read_state,
    run_script,
    script_env,
    train,
    without_timings,
)


def cli_args(workdir: Path, run_id: str, *extra: str) -> list[str]:
    overrides = [f"--config.{o}" for o in TINY]
    return [
        f"--config={BASELINE}",
        f"--workdir={workdir}",
        f"--run_id={run_id}",
        *overrides,
        *extra,
    ]


def train_in_process(workdir: Path, run_id: str, overrides: list[str]) -> dict[str, Any]:
    return train(workdir, run_id, overrides)[0]


def start(workdir: Path, run_id: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    """Starts scripts/train.py; stderr goes to a file (a pipe could fill up and block)."""
    log = workdir / f"{run_id}.stderr"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), *cli_args(workdir, run_id, *extra)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        cwd=REPO,
        env=script_env(),
    )
    return proc, log


def wait_for_checkpoint(
    proc: subprocess.Popen, run_dir: Path, newer_than: int = 0, timeout: float = 240
) -> int:
    """Polls until model_last holds a complete step > newer_than (Orbax renames it into place
    when done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [int(p.name) for p in (run_dir / "model_last").glob("*") if p.name.isdigit()]
        if any(s > newer_than for s in steps):
            return max(steps)
        assert proc.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("no checkpoint within the timeout")


def metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Same history (apart from wall-clock rates), best, final step and state, bit for bit."""
    got, want = metrics(run_dir), metrics(reference)
    assert got["status"] == want["status"] == "completed"
    assert without_timings(got["history"]) == without_timings(want["history"])
    assert got["best"] == want["best"]
    (step_a, state_a), (step_b, state_b) = read_state(run_dir / "model_last"), read_state(
        reference / "model_last"
    )
    assert step_a == step_b == want["total_steps"]
    leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
    assert len(leaves_a) == len(leaves_b) > 0
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted tiny run."""
    workdir = tmp_path_factory.mktemp("ref")
    train_in_process(workdir, "ref", list(TINY))
    return workdir / "checkpoints" / "ref"


def test_sigterm_then_sigkill_then_resume_is_bit_exact(tmp_path, reference):
    """A run preempted twice, with broken checkpoints left behind, ends as if never stopped."""
    # Checkpoints every 15 steps fall inside the 10-step logging intervals, so the resumed runs
    # must carry on with the saved interval sums to log the same train records.
    proc, log = start(tmp_path, "p", "--config.checkpoint.every_steps=15")
    run_dir, last = tmp_path / "checkpoints" / "p", tmp_path / "checkpoints" / "p" / "model_last"

    # 1. SIGTERM: the step finishes, model_last is saved, the record says interrupted.
    wait_for_checkpoint(proc, run_dir)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    record = metrics(run_dir)
    stopped = record["stopped_at_step"]
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"
    assert 0 < stopped < record["total_steps"]
    assert read_state(last)[0] == stopped
    last_line = log.read_text().strip().splitlines()[-1]
    assert "--run_id=p --resume" in last_line and f"step {stopped}" in last_line

    # 2. Newer than the good step: a save cut short by a kill (Orbax's temporary folder) and a
    # step folder whose files are gone. Resume skips both and is killed after a new checkpoint.
    (last / f"{stopped + 7}.orbax-checkpoint-tmp-1234567").mkdir()
    truncated = last / str(stopped + 5)
    shutil.copytree(last / str(stopped), truncated)
    for file in (truncated / "state").rglob("*"):
        if file.is_file():
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), f"--workdir={tmp_path}"]
        + ["--run_id=p", "--resume"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        cwd=REPO,
        env=script_env(),
    )
    wait_for_checkpoint(proc, run_dir, newer_than=stopped + 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert f"resuming from step {stopped}" in log.read_text()
    assert metrics(run_dir)["status"] == "running"  # killed mid-run; the record still parses
    names = {p.name for p in last.iterdir()}
    assert not any("orbax-checkpoint-tmp" in n for n in names)
    assert any(n.startswith(f"{stopped + 5}.corrupt-") for n in names)

    # 3. Resume to the end.
    result = run_script("train.py", f"--workdir={tmp_path}", "--run_id=p", "--resume")
    assert result.returncode == 0, result.stderr
    assert_same_run(run_dir, reference)


def test_second_signal_exits_at_once_leaving_complete_files(tmp_path):
    proc, log = start(tmp_path, "s")
    run_dir = tmp_path / "checkpoints" / "s"
    first = wait_for_checkpoint(proc, run_dir)
    # Two different signals while stopped: both are pending when it continues, so the second
    # handler runs before the graceful stop can finish.
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=120) in (128 + signal.SIGINT, 128 + signal.SIGTERM)
    assert "second signal" in log.read_text()
    assert metrics(run_dir)["run_id"] == "s"  # a complete JSON file
    step, state = read_state(run_dir / "model_last")
    assert step >= first and int(state["step"]) == step
    result = run_script("train.py", f"--workdir={tmp_path}", "--run_id=s", "--resume")
    assert result.returncode == 0, result.stderr


def train_steps(record: dict[str, Any]) -> list[int]:
    return [r["step"] for r in record["history"] if r["split"] == "train"]


def test_signal_right_after_a_logging_boundary_keeps_its_train_record(tmp_path, monkeypatch):
    """Step 10 logs only (TINY: validation and saves every 20); its record waits for the next
    dispatch, which a signal during step 10 prevents: the loop must still write it."""
    at_batch(monkeypatch, 9, lambda: os.kill(os.getpid(), signal.SIGTERM))
    record = train_in_process(tmp_path, "t", TINY)
    assert record["status"] == "interrupted" and record["stopped_at_step"] == 10
    assert train_steps(record) == [10]
    assert train_steps(metrics(tmp_path / "checkpoints" / "t")) == [10]
    assert read_state(tmp_path / "checkpoints" / "t" / "model_last")[0] == 10


def test_a_failing_run_keeps_the_train_record_of_its_last_boundary(tmp_path, monkeypatch):
    def fail() -> None:
        raise RuntimeError("injected")

    at_batch(monkeypatch, 10, fail)  # asking for step 11's batch, step 10's record not written
    with pytest.raises(RuntimeError, match="injected"):
        train_in_process(tmp_path, "f", TINY)
    record = metrics(tmp_path / "checkpoints" / "f")
    assert record["status"] == "failed" and train_steps(record) == [10]


def test_nan_policy_stop_keeps_last_good_state_and_best(tmp_path, monkeypatch, capsys):
    from src.training.entry import main

    inject_nan_at(monkeypatch, {25})  # the 26th update; validation and model_best at step 20
    status = main(cli_args(tmp_path, "n"))
    assert status == 3
    assert "non-finite loss and grad_norm at step 26" in capsys.readouterr().err
    run_dir = tmp_path / "checkpoints" / "n"
    record = metrics(run_dir)
    assert record["status"] == "failed" and record["stopped_at_step"] == 25
    assert record["failure"]["step"] == 26 and np.isnan(record["failure"]["loss"])
    step, state = read_state(run_dir / "model_last")
    assert step == 25 and int(state["step"]) == 25
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
    assert record["best"]["step"] == 20
    assert [p.name for p in (run_dir / "model_best").iterdir() if p.name.isdigit()] == ["20"]


def test_nan_policy_skip_drops_and_counts_the_steps(tmp_path, monkeypatch):
    inject_nan_at(monkeypatch, {25, 51})
    record = train_in_process(tmp_path, "s", [*TINY, "training.nan_policy=skip"])
    assert record["status"] == "completed" and record["skipped_steps"] == 2
    train = {r["step"]: r for r in record["history"] if r["split"] == "train"}
    assert {s: r["skipped_steps"] for s, r in train.items() if r["skipped_steps"]} == {30: 1, 60: 1}
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in train.values())
    step, state = read_state(tmp_path / "checkpoints" / "s" / "model_last")
    assert step == int(state["step"]) == record["total_steps"]


def test_checkpoint_write_error_names_the_path_and_keeps_the_last_good_step(tmp_path, monkeypatch):
    original = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if Path(self.directory).name == "model_last" and step == 40:
            raise OSError(28, "No space left on device")
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(StorageError) as info:
        train_in_process(tmp_path, "io", list(TINY))
    run_dir = tmp_path / "checkpoints" / "io"
    message = str(info.value)
    assert str(run_dir / "model_last") in message and "No space left" in message
    assert "newest complete checkpoint there: step 20" in message
    assert info.value.exit_status == 4
    assert metrics(run_dir)["status"] == "failed"
    assert read_state(run_dir / "model_last")[0] == 20


# --- Units: the NaN guard, the interval round trip, the resume config rules.


def small_state(value: float):
    import jax.numpy as jnp
    import optax

    from src.training.state import TrainState

    params = {"w": jnp.full((3,), value, jnp.float32)}
    return TrainState(jnp.int32(7), params, optax.adam(0.1).init(params))


@pytest.mark.parametrize("policy, next_step", [("skip", 8), ("stop", 7)])
def test_a_nonfinite_step_leaves_params_and_optimizer_state(policy, next_step):
    import jax.numpy as jnp
    import optax

    from src.training.step import Stability, apply_if_finite

    off = Stability(ema_decay=0.0, skip_grad_norm=0.0)

    tx = optax.adam(0.1)
    old = small_state(1.0)
    grads = {"w": jnp.full((3,), 0.5, jnp.float32)}
    bad = {"loss": jnp.float32(np.nan), "grad_norm": jnp.float32(1.0), "kl": jnp.float32(3.0)}
    state, out = apply_if_finite(tx, old, grads, dict(bad), policy, jnp.bool_(True), off)
    assert int(state.step) == next_step and float(out["nonfinite"]) == 1.0
    for got, want in zip(jax.tree.leaves(state[1:]), jax.tree.leaves(old[1:]), strict=True):
        np.testing.assert_array_equal(got, want)
    expected_kl = 0.0 if policy == "skip" else 3.0  # skip zeroes the sums' inputs
    assert float(out["kl"]) == expected_kl

    good = {**bad, "loss": jnp.float32(0.5)}
    state, out = apply_if_finite(tx, old, grads, good, policy, jnp.bool_(True), off)
    assert int(state.step) == 8 and float(out["nonfinite"]) == 0.0
    updates, opt_state = tx.update(grads, old.opt_state, old.params)
    want = (optax.apply_updates(old.params, updates), opt_state)
    for got, expected in zip(jax.tree.leaves(state[1:]), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6)  # compiled vs op by op: 1 ulp


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_an_inactive_step_leaves_the_state_as_it_is(policy):
    import jax.numpy as jnp
    import optax

    from src.training.step import Stability, apply_if_finite

    off = Stability(ema_decay=0.0, skip_grad_norm=0.0)

    old = small_state(1.0)
    grads = {"w": jnp.full((3,), 0.5, jnp.float32)}
    good = {"loss": jnp.float32(0.5), "grad_norm": jnp.float32(1.0)}
    state, _ = apply_if_finite(optax.adam(0.1), old, grads, good, policy, jnp.bool_(False), off)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(old), strict=True):
        np.testing.assert_array_equal(got, want)


def test_interval_survives_json_bit_for_bit():
    from src.training import interval as accum

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=5), [np.nan, np.inf, -0.0, 1e-45, 3.4e38]]).astype(
        np.float32
    )
    sums = {"kl_per_dim": jax.numpy.asarray(values), "loss": jax.numpy.float32(values[0])}
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    text = json.dumps(accum.to_json(accum.Interval(sums, 7, 1.5), 2.5))
    back = accum.from_json(json.loads(text), sharding)
    assert back.steps == 7 and back.seconds == 2.5 and back.sums is not None
    for key, value in sums.items():
        got = np.asarray(back.sums[key])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.view(np.uint32), np.asarray(value).view(np.uint32))
    assert accum.from_json(None, sharding) == accum.EMPTY


def test_interval_means_exclude_skipped_steps():
    from src.training.interval import means

    sums = {"loss": np.float32(6.0), "nonfinite": np.float32(1.0)}
    assert means(sums, 4) == {"loss": 2.0, "skipped_steps": 1}
    assert np.isnan(means({"loss": np.float32(0), "nonfinite": np.float32(2)}, 2)["loss"])


def saved_run(tmp_path: Path, overrides: list[str]):
    from argparse import Namespace

    from src.utils.config import save_config

    paths = run_paths(tmp_path, "r")
    prepare(paths, resume=False, overwrite=False)
    save_config(load_config(BASELINE, overrides=overrides), paths.config)
    return paths, Namespace(config=None, model=None, data=None)


def test_resume_keeps_the_saved_config_and_allows_a_new_length(tmp_path):
    from src.training.entry import resume_config

    paths, args = saved_run(tmp_path, list(TINY))
    assert resume_config(args, [], paths) == load_config(BASELINE, overrides=TINY)
    # Repeating the original command is fine; a new length with a constant schedule too.
    args.config = str(BASELINE)
    assert resume_config(args, list(TINY), paths).training.epochs == 2
    args.config = None
    assert resume_config(args, ["training.epochs=5"], paths).training.epochs == 5


@pytest.mark.parametrize(
    "saved, asked, message",
    [
        ([], ["training.lr=0.1"], "training.lr (saved 0.001, asked 0.1) differ"),
        ([], ["model.latent_dim=8"], "model.latent_dim"),
        (["optimizer.schedule=warmup_cosine"], ["training.epochs=5"], "decay horizon"),
    ],
)
def test_resume_refuses_other_changes(tmp_path, saved, asked, message):
    from src.training.entry import resume_config
    from src.utils.errors import ConfigError

    paths, args = saved_run(tmp_path, [*TINY, *saved])
    with pytest.raises(ConfigError, match=re.escape(message)):
        resume_config(args, asked, paths)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--run_id=nope", "--resume"], "no run to resume"),
        (["--run_id=nope", "--resume", "--overwrite"], "exclude each other"),
    ],
)
def test_bad_resume_flags_exit_2(tmp_path, args, message):
    result = run_script("train.py", f"--workdir={tmp_path}", *args, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "checkpoints" / "nope").exists()


def test_storage_failures_are_recognised_when_wrapped():
    from src.training.run.checkpoint import is_storage_failure

    wrapped = ValueError('RESOURCE_EXHAUSTED: Failed writing: "x": No space left on device')
    assert is_storage_failure(wrapped) and is_storage_failure(PermissionError(13, "denied"))
    try:
        try:
            raise OSError(30, "Read-only")
        except OSError as e:
            raise RuntimeError("save failed") from e
    except RuntimeError as e:
        assert is_storage_failure(e)
    assert not is_storage_failure(ValueError("tree structures do not match"))


def test_longer_resume_with_constant_schedule_equals_a_fresh_longer_run(tmp_path, reference):
    from argparse import Namespace

    from src.training.entry import resume_config
    from src.utils.config import load_saved_config

    shutil.copytree(reference, tmp_path / "checkpoints" / "x")
    paths = run_paths(tmp_path, "x")
    prepare(paths, resume=True, overwrite=False)
    args = Namespace(config=None, model=None, data=None)
    cfg = resume_config(args, ["training.epochs=3"], paths)
    record = train_and_evaluate(cfg, paths, resume=True)
    assert load_saved_config(paths.config).training.epochs == 3  # the record tells the truth
    assert record["total_steps"] == 132 and record["status"] == "completed"
    train_in_process(tmp_path, "fresh", [*TINY, "training.epochs=3"])
    (_, a), (_, b) = read_state(paths.last), read_state(
        tmp_path / "checkpoints" / "fresh" / "model_last"
    )
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
