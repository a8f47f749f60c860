"""steps_per_call (K steps per compiled call) equals K single steps; the step compiles once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import jax
import numpy as np
import pytest

from src.data.pipeline import Splits
from src.training import setup
from src.training.multistep import steps_until_boundary
from tests.helpers import (
    BASELINE,
    TINY,
    assert_same_arrays,
    read_state,
    run_script,
    train,
    without_timings,
)


def train_tiny(workdir: Path, run_id: str, overrides: list[str]) -> tuple[dict, dict]:
    """Trains the tiny baseline in process; returns the record and model_last's state."""
    record, paths = train(workdir, run_id, overrides)
    return record, read_state(paths.last)[1]


def untimed(record: dict) -> dict:
    out = {
        k: v for k, v in record.items() if k not in ("run_id", "history", "final", "config_hash")
    }
    out["history"] = without_timings(record["history"])
    return out


def assert_same_run(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    # JSON text, so that NaN (a failure's offending value) compares equal to NaN
    assert json.dumps(untimed(a[0])) == json.dumps(untimed(b[0]))
    assert_same_arrays(a[1], b[1])


def test_steps_until_boundary():
    assert steps_until_boundary(0, (10, 20, 44), 88) == 10
    assert steps_until_boundary(40, (10, 20, 44), 88) == 4
    assert steps_until_boundary(85, (10, 100), 88) == 3


def test_steps_per_call_equals_single_steps(tmp_path):
    # TINY: 44 steps per epoch, log every 10, eval and checkpoint every 20: K = 3 and 8 leave
    # remainders before boundaries, run as single steps, and calls spanning two epochs; the
    # streamed provider serves K-step calls too.
    single = train_tiny(tmp_path, "k1", TINY)
    assert_same_run(single, train_tiny(tmp_path, "k3", [*TINY, "training.steps_per_call=3"]))
    streamed = [*TINY, "training.steps_per_call=8", "data.on_device=false"]
    assert_same_run(single, train_tiny(tmp_path, "streamed", streamed))


def with_nan_example(monkeypatch) -> None:
    """One training example becomes NaN: every step whose batch holds it is non-finite."""
    original = setup.load_splits

    def load_splits(cfg):
        splits = original(cfg)
        train = splits.train.copy()
        train[7] = np.nan
        return Splits(train, splits.val, splits.test, splits.info)

    monkeypatch.setattr(setup, "load_splits", load_splits)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_steps_per_call_keeps_the_nan_policy(tmp_path, monkeypatch, policy):
    with_nan_example(monkeypatch)
    overrides = [*TINY, f"training.nan_policy={policy}"]
    single = train_tiny(tmp_path, "k1", overrides)
    multi = train_tiny(tmp_path, "k4", [*overrides, "training.steps_per_call=4"])
    assert_same_run(single, multi)
    if policy == "stop":
        assert single[0]["status"] == "failed" and single[0]["stopped_at_step"] < 44
    else:
        assert single[0]["status"] == "completed" and single[0]["skipped_steps"] == 2


def test_steps_compile_once_over_several_epochs(tmp_path):
    """Lowering to XLA happens once per program, whether or not the persistent cache hits."""
    lowered: Counter[str] = Counter()

    def listen(event: str, duration_secs: float, **kwargs: str | int) -> None:
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered[str(kwargs.get("fun_name", ""))] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        train_tiny(tmp_path, "r", [*TINY, "training.epochs=3", "training.steps_per_call=4"])
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    # 132 steps over 3 epochs, in 4-step calls and single steps: one program for each length.
    assert lowered["jit(run)"] == 2, sorted(lowered.items())


def test_benchmark_writes_well_formed_json(tmp_path):
    """Runs, not timed: the numbers are checked for presence and consistency only."""
    out = tmp_path / "bench.json"
    result = run_script(
        "benchmark.py",
        f"--config={BASELINE}",
        "--steps=20",
        "--repeats=1",
        "--matmul_size=64",
        f"--out={out}",
        *[f"--config.{o}" for o in TINY],
        "--config.training.steps_per_call=2",
        "--iwae_images=40",
        "--config.eval.iwae_samples=20",
        "--config.eval.iwae_chunk=8",
    )
    assert result.returncode == 0, result.stderr

    def no_nan(text: str) -> None:
        raise AssertionError(f"{text} in the benchmark JSON")

    data = json.loads(out.read_text(), parse_constant=no_nan)
    assert json.loads(result.stdout) == data
    for key in ("time_to_first_step_s", "compile_s", "steps_per_s", "examples_per_s"):
        assert data[key] > 0, key
    assert data["examples_per_s"] == pytest.approx(32 * data["steps_per_s"])
    assert data["flops_per_step"] > 0 and data["matmul_ceiling"]["flops_per_s"] > 0
    assert data["mfu"] == pytest.approx(
        data["flops_per_step"] * data["steps_per_s"] / data["matmul_ceiling"]["flops_per_s"]
    )
    assert data["loop"]["steps_per_s"] > 0 and data["steps_per_call"] == 2
    assert data["loop"]["speedup_vs_k1"] == pytest.approx(
        data["loop"]["steps_per_s"] / data["loop"]["steps_per_s_k1"]
    )
    assert 0 <= data["checkpoint_share"] < 1 and 0 < data["checkpoint_share_blocking_only"] < 1
    ab = data["checkpoint_ab"]
    assert (
        ab["saves"] > 0 and len(ab["wall_s_saving_often"]) == len(ab["wall_s_saving_at_end"]) == 1
    )
    assert data["peak_host_rss_bytes"] > 0
    ref = data["reference"]
    assert ref["bare_over_reference"] == pytest.approx(data["steps_per_s"] / ref["steps_per_s"])
    loop_ratio = data["loop"]["steps_per_s"] / ref["steps_per_s"]
    assert data["loop"]["over_reference"] == pytest.approx(loop_ratio)
    summary = result.stderr.splitlines()[-1]
    assert f"ratio {ref['bare_over_reference']:.3f}" in summary
    assert f"ratio {data['loop']['over_reference']:.3f}" in summary
    iwae = data["iwae"]
    assert iwae["images"] == 40 and iwae["finite"] and iwae["seconds"] > 0
    # The decoder 4-32-(64 pixels x levels) does at least the FLOPs of a 4-32-64 MLP.
    assert iwae["decoder_flops_per_sample"] >= 2 * (4 * 32 + 32 * 64)
    assert iwae["floor_s"] == pytest.approx(iwae["matmul_floor_s"] + iwae["likelihood_floor_s"])
    assert iwae["matmul_floor_s"] > 0 and iwae["likelihood_floor_s"] > 0
    assert iwae["over_floor"] == pytest.approx(iwae["seconds"] / iwae["floor_s"])


def test_benchmark_refuses_bad_flags(tmp_path):
    result = run_script("benchmark.py", f"--config={BASELINE}", "--steps=0", timeout=120)
    assert result.returncode == 2 and "--steps must be > 0" in result.stderr


def test_the_reference_step_schedules_over_the_runs_total_steps(monkeypatch):
    """The reference step's optimizer decays over the run's steps, as the loop's does (its
    third argument is total_steps, not epochs)."""
    from src.experiments import benchmark
    from src.training.optim import build_optimizer
    from src.utils.config import load_config

    cfg = load_config(BASELINE, overrides=["optimizer.schedule=warmup_cosine"])
    horizons = []

    def spy(optimizer, peak_lr, total_steps):
        horizons.append(total_steps)
        return build_optimizer(optimizer, peak_lr, total_steps)

    monkeypatch.setattr(benchmark, "build_optimizer", spy)
    benchmark.reference_step(cfg, 1)
    assert horizons == [benchmark.build_step(cfg).total_steps]
    assert horizons[0] == cfg.training.epochs * 22  # 1437 digits in training, 64 a batch


def test_the_reference_step_runs_the_hierarchical_family():
    """A hierarchical model's reference draws the noise of all its latent groups (not
    model.latent_dim units) and runs."""
    from src.experiments import benchmark
    from src.utils.config import load_config

    cfg = load_config(BASELINE, {"model": "hierarchical"})
    time_steps = benchmark.reference_step(cfg, 5)
    assert time_steps() > 0
