"""Data parallelism: the same numbers on 1 and 4 devices, with jit, shard_map and pmap, in one
process and across two processes; checkpoints that move between device counts; batch-size errors.

JAX is already initialized with one CPU device in the pytest process, so multi-device runs happen
in subprocesses with XLA_FLAGS=--xla_force_host_platform_device_count=N.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from src.training.device.parallel import check_backend, initialize_distributed
from src.training.run import checkpoint
from src.training.setup import abstract_train_state
from src.utils.config import load_config, load_saved_config
from src.utils.errors import ConfigError
from tests.helpers import BASELINE, REPO

RTOL = 1e-5  # float reassociation of the cross-device mean only
STEPS = 22  # 1437 training examples // 64 per batch: one epoch
SMALL = [
    "training.epochs=1",
    "training.batch_size=64",
    "model.hidden_dims=[32]",
    "model.latent_dim=4",
    "logging.every_steps=1",
    "logging.console=false",
    "logging.tensorboard=false",
    "eval.every_steps=11",
    "checkpoint.every_steps=11",
]


def env_with_devices(n: int) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
        "JAX_PLATFORMS": "cpu",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
    }


def fresh(run_id: str, workdir: Path, *extra: str) -> list[str]:
    overrides = [f"--config.{o}" for o in [*SMALL, *extra]]
    return [f"--config={BASELINE}", f"--workdir={workdir}", f"--run_id={run_id}", *overrides]


def resume(run_id: str, workdir: Path, *extra: str) -> list[str]:
    return [f"--workdir={workdir}", f"--run_id={run_id}", "--resume"] + [
        f"--config.{o}" for o in extra
    ]


def run_many(runs: list[list[str]], devices: int, timeout: float = 400) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.run_many", json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env_with_devices(devices),
    )
    assert result.returncode == 0, result.stderr[-3000:]


def history(workdir: Path, run_id: str, split: str, key: str) -> np.ndarray:
    record = json.loads((workdir / "checkpoints" / run_id / "metrics.json").read_text())
    return np.array([r[key] for r in record["history"] if r["split"] == split])


def final_state_on_one_device(run_dir: Path) -> dict:
    """model_last restored onto this process's single device, whatever wrote it."""
    cfg = load_saved_config(run_dir / "config.yaml")
    _, shapes = abstract_train_state(cfg, (8, 8, 1), 1)
    target = checkpoint.abstract_like(shapes, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    with checkpoint.make_manager(run_dir / "model_last", 1) as manager:
        state, _ = checkpoint.restore(manager, target)
    return jax.tree.map(np.asarray, state._asdict())


def assert_close_trees(a: dict, b: dict) -> float:
    """Asserts every leaf agrees to RTOL (atol for entries near zero); returns the max |a-b|."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=1e-6)
        worst = max(worst, float(np.max(np.abs(np.asarray(x, float) - np.asarray(y, float)))))
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Every single-process run, in one 4-device interpreter (one JAX start-up)."""
    w = tmp_path_factory.mktemp("parallel")
    run_many(
        [
            fresh("jit4", w),
            fresh("shard4", w, "parallel.backend=shard_map"),
            fresh("pmap4", w, "parallel.backend=pmap"),
            fresh("jit4_k4", w, "training.steps_per_call=4", "logging.every_steps=11"),
            fresh("pmap4_k4", w, "parallel.backend=pmap", "training.steps_per_call=4"),
            fresh("one", w, "parallel.num_devices=1"),
            fresh("one_shard", w, "parallel.num_devices=1", "parallel.backend=shard_map"),
            fresh("one_long", w, "parallel.num_devices=1", "training.epochs=2"),
            *(
                fresh(f"iwae_{name}", w, *IWAE, *extra)
                for name, extra in (
                    ("jit4", []),
                    ("shard4", ["parallel.backend=shard_map"]),
                    ("pmap4", ["parallel.backend=pmap"]),
                    ("one", ["parallel.num_devices=1"]),
                    ("jit4_k4", ["training.steps_per_call=4"]),
                )
            ),
        ],
        devices=4,
    )
    # Resume each 1-epoch run for a second epoch on the other device count (copies, so the
    # 1-epoch records stay for the other tests).
    for src, dst in (("jit4", "jit4_then_one"), ("one", "one_then_pmap4")):
        shutil.copytree(w / "checkpoints" / src, w / "checkpoints" / dst)
    run_many(
        [
            resume("jit4_then_one", w, "training.epochs=2", "parallel.num_devices=1"),
            resume("one_then_pmap4", w, "training.epochs=2", "parallel.num_devices=0")
            + ["--config.parallel.backend=pmap"],
        ],
        devices=4,
    )
    return w


@pytest.mark.parametrize("other", ["shard4", "pmap4", "one"])
def test_same_losses_and_params_on_any_device_count_and_backend(runs, other):
    for split, key in (("train", "loss"), ("train", "grad_norm"), ("val", "elbo")):
        a, b = history(runs, "jit4", split, key), history(runs, other, split, key)
        assert len(a) == (STEPS if split == "train" else 2)  # val at steps 11, 22
        np.testing.assert_allclose(b, a, rtol=RTOL)
    reference = final_state_on_one_device(runs / "checkpoints" / "jit4")
    assert int(reference["step"]) == STEPS
    assert_close_trees(final_state_on_one_device(runs / "checkpoints" / other), reference)


def test_jit_and_shard_map_are_bit_identical_on_one_device(runs):
    """A one-device run gives the same bits with the default jit step as with shard_map."""
    for split, key in (("train", "loss"), ("train", "grad_norm"), ("val", "elbo")):
        a, b = history(runs, "one", split, key), history(runs, "one_shard", split, key)
        np.testing.assert_array_equal(b, a)
    state = final_state_on_one_device(runs / "checkpoints" / "one_shard")
    reference = final_state_on_one_device(runs / "checkpoints" / "one")
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("k4, k1", [("jit4_k4", "jit4"), ("pmap4_k4", "pmap4")])
def test_steps_per_call_on_four_devices_equals_single_steps(runs, k4, k1):
    """4-step calls on 4 devices, jit and pmap (jit: logging every 11 steps, so calls and
    single steps mix)."""
    np.testing.assert_array_equal(
        history(runs, k4, "val", "elbo"), history(runs, k1, "val", "elbo")
    )
    reference = final_state_on_one_device(runs / "checkpoints" / k1)
    state = final_state_on_one_device(runs / "checkpoints" / k4)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(x, y)


def test_evaluate_splits_examples_over_devices_with_one_device_numbers(runs, tmp_path):
    """evaluate.py on 4 devices (each scores a quarter of every batch) gives the record of one
    device, up to the order of the sums."""
    records = {}
    for n in (1, 4):
        run_dir = tmp_path / f"d{n}" / "checkpoints" / "one"
        shutil.copytree(runs / "checkpoints" / "one", run_dir)
        args = [f"--run_dir={run_dir}", "--checkpoint=last", "--config.eval.iwae_samples=20"]
        result = subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "evaluate.py"),
                *args,
                "--config.eval.figures=false",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            env=env_with_devices(n),
        )
        assert result.returncode == 0, result.stderr[-2000:]
        records[n] = json.loads((run_dir / "eval" / "last_test.json").read_text())
    for key in ("elbo", "iwae_nll", "kl", "mutual_info"):
        np.testing.assert_allclose(records[4][key], records[1][key], rtol=RTOL)
    assert records[4]["active_units"] == records[1]["active_units"]
    bad = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "evaluate.py"),
            f"--run_dir={run_dir}",
            "--config.eval.batch_size=30",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env_with_devices(4),
    )
    assert bad.returncode == 2 and "eval.batch_size=30 does not divide evenly over 4" in bad.stderr


IWAE = ["training.objective=iwae", "training.iwae_samples=3", "training.iwae_gradient=dreg"]


@pytest.mark.parametrize("other", ["iwae_shard4", "iwae_pmap4", "iwae_one", "iwae_jit4_k4"])
def test_iwae_objective_on_any_backend_device_count_and_steps_per_call(runs, other):
    """The IWAE bound (k = 3, DReG) as the loss: same numbers on 4 devices with jit, shard_map
    or pmap, on one device and with 4 steps per call; its bound is logged next to the ELBO."""
    a, b = history(runs, "iwae_jit4", "train", "loss"), history(runs, other, "train", "loss")
    assert len(a) == STEPS
    np.testing.assert_allclose(b, a, rtol=RTOL)
    bound = history(runs, "iwae_jit4", "train", "iwae_bound")
    np.testing.assert_array_equal(bound, -a)
    assert not np.array_equal(bound, history(runs, "iwae_jit4", "train", "elbo"))
    reference = final_state_on_one_device(runs / "checkpoints" / "iwae_jit4")
    assert_close_trees(final_state_on_one_device(runs / "checkpoints" / other), reference)
    record = json.loads((runs / "checkpoints" / other / "metrics.json").read_text())
    assert record["train_bound"] == "iwae k=3 (dreg)"


@pytest.mark.parametrize("resumed", ["jit4_then_one", "one_then_pmap4"])
def test_resume_on_another_device_count_continues_the_run(runs, resumed):
    """A 4-device checkpoint resumed on 1 device (and the reverse) matches an uninterrupted run."""
    ref = history(runs, "one_long", "train", "loss")
    got = history(runs, resumed, "train", "loss")
    assert len(ref) == len(got) == 2 * STEPS
    np.testing.assert_allclose(got, ref, rtol=RTOL)
    assert_close_trees(
        final_state_on_one_device(runs / "checkpoints" / resumed),
        final_state_on_one_device(runs / "checkpoints" / "one_long"),
    )


GATHER_WITHOUT_TRANSFERS = """
import jax, numpy as np
from src.data.batches import DeviceBatches, gather
from src.training.device.parallel import make_mesh, split_on_devices
x = np.random.default_rng(0).uniform(size=(50, 3)).astype(np.float32)
batches = DeviceBatches(x, jax.random.key(7), 8, 6, split_on_devices(make_mesh(jax.devices())))
in_call = jax.jit(gather)
for step in range(7):  # compiles, draws the orders, copies each offset once
    in_call(batches.chunk(step, 2)), batches(step)
with jax.transfer_guard("disallow"):  # implicit host-to-device and device-to-device copies
    for step in range(7, 12):  # the rest of epoch 1
        in_call(batches.chunk(step, 2)).block_until_ready(), batches(step).block_until_ready()
"""


def test_on_device_batches_move_nothing_between_devices_per_call():
    """An epoch's order is replicated once, not copied from device 0 to the others each call."""
    result = subprocess.run(
        [sys.executable, "-c", GATHER_WITHOUT_TRANSFERS],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env_with_devices(4),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_pmap_across_processes_is_a_config_error(monkeypatch):
    check_backend("pmap")  # one process
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    check_backend("shard_map")
    with pytest.raises(ConfigError, match="parallel.backend=pmap runs in one process only"):
        check_backend("pmap")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "extra",
    [
        [],  # training split resident on the devices: each device gathers its rows
        pytest.param(  # streamed: each host gathers its rows on the host
            ["--config.data.on_device=false", "--config.parallel.backend=shard_map"],
            marks=pytest.mark.slow,
        ),
    ],
)
def test_two_processes_agree_with_one_process(runs, tmp_path, extra):
    """2 processes x 2 CPU devices through jax.distributed (gloo collectives) = 1 x 4 devices."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "scripts" / "train.py"),
                *fresh("multi", tmp_path),
                "--config.parallel.distributed=true",
                f"--config.parallel.coordinator_address=127.0.0.1:{port}",
                "--config.parallel.num_processes=2",
                f"--config.parallel.process_id={i}",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=env_with_devices(2),
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    prov = json.loads((tmp_path / "checkpoints" / "multi" / "provenance.json").read_text())
    assert prov["devices"]["process_count"] == 2 and prov["devices"]["count"] == 4
    for split, key in (("train", "loss"), ("val", "elbo")):
        np.testing.assert_allclose(
            history(tmp_path, "multi", split, key), history(runs, "jit4", split, key), rtol=RTOL
        )
    assert_close_trees(
        final_state_on_one_device(tmp_path / "checkpoints" / "multi"),
        final_state_on_one_device(runs / "checkpoints" / "jit4"),
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.batch_size=30", "training.batch_size=30 does not divide evenly over 4 devices"),
        ("parallel.num_devices=8", "parallel.num_devices=8 but only 4 devices"),
    ],
)
def test_batch_or_device_count_mistakes_exit_2(tmp_path, override, message):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), *fresh("bad", tmp_path, override)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env_with_devices(4),
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_distributed_accepts_yaml_booleans_and_rejects_others():
    assert load_config(BASELINE, overrides=["parallel.distributed=true"]).parallel.distributed == (
        "true"
    )
    assert load_config(BASELINE, overrides=["parallel.distributed=false"]).parallel.distributed == (
        "false"
    )
    with pytest.raises(ConfigError, match="parallel.distributed: 'maybe' is not one of auto"):
        load_config(BASELINE, overrides=["parallel.distributed=maybe"])
    with pytest.raises(ConfigError, match="parallel.process_id"):
        load_config(BASELINE, overrides=["parallel.process_id=-2"])


def test_distributed_auto_stays_off_without_a_cluster(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    for name in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    for mode in ("auto", "false"):
        cfg = load_config(BASELINE, overrides=[f"parallel.distributed={mode}"])
        assert initialize_distributed(cfg.parallel) is False
    assert jax.process_count() == 1


def test_distributed_auto_needs_several_processes(monkeypatch):
    """A one-task SLURM job stays single-process; a two-task one would initialize."""
    from src.training.device.parallel import detected_process_count

    slurm = {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "node1", "SLURM_PROCID": "0"}
    for name, value in {**slurm, "SLURM_LOCALID": "0", "SLURM_NTASKS": "1"}.items():
        monkeypatch.setenv(name, value)
    assert detected_process_count() == 1
    cfg = load_config(BASELINE, overrides=["parallel.distributed=auto"])
    assert initialize_distributed(cfg.parallel) is False
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert detected_process_count() == 2
