"""The stability kit: EMA of the parameters (training.ema.decay) and update skipping above a
gradient norm (training.skip_grad_norm), in the step, the records, validation and resume."""

from __future__ import annotations

import json
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from src.evaluation.evaluate import evaluate_run
from src.training.state import TrainState, eval_params, init_state, update_ema
from src.training.step import Stability, apply_if_finite
from src.utils.config import load_config
from src.utils.errors import ConfigError
from tests.helpers import BASELINE, TINY, read_state, run_script, train, without_timings
from tests.test_resume import assert_same_run, metrics, start, wait_for_checkpoint

# Skips some early updates of the tiny baseline (its interval grad norms are 13 to 25).
STABLE = ["training.ema.decay=0.9", "training.skip_grad_norm=22", "training.max_skipped_fraction=1"]


def test_update_ema_is_the_polyak_average():
    ema, params = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 6.0])}
    np.testing.assert_allclose(update_ema(ema, params, 0.75)["w"], [1.5, 3.0])
    assert update_ema(None, params, 0.75) is None


def test_init_state_copies_params_into_the_ema():
    params = {"w": jnp.array([1.0, 2.0])}
    state = init_state(params, optax.adam(0.1), with_ema=True)
    np.testing.assert_array_equal(state.ema["w"], params["w"])
    assert state.ema["w"] is not params["w"]  # own buffers: the step donates the state
    assert init_state(params, optax.adam(0.1)).ema is None
    assert eval_params(state, use_ema=True) is state.ema
    assert eval_params(state, use_ema=False) is state.params


def stable_state() -> TrainState:
    params = {"w": jnp.full((3,), 1.0, jnp.float32)}
    return init_state(params, optax.adam(0.1), with_ema=True)


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_large_gradient_norm_drops_the_update_but_advances_the_step(policy):
    tx, old = optax.adam(0.1), stable_state()
    grads = {"w": jnp.full((3,), 0.5, jnp.float32)}
    big = {"loss": jnp.float32(0.5), "grad_norm": jnp.float32(10.0)}
    kit = Stability(ema_decay=0.5, skip_grad_norm=10.0)
    state, out = apply_if_finite(tx, old, grads, dict(big), policy, jnp.bool_(True), kit)
    assert int(state.step) == 1  # the next step sees the next batch, also under nan_policy stop
    assert float(out["skipped_grad_norm"]) == 1.0 and float(out["nonfinite"]) == 0.0
    assert float(out["loss"]) == 0.5  # its metrics are kept
    for got, want in zip(jax.tree.leaves(state[1:]), jax.tree.leaves(old[1:]), strict=True):
        np.testing.assert_array_equal(got, want)  # params, optimizer state and EMA untouched

    small = {**big, "grad_norm": jnp.float32(9.9)}
    state, out = apply_if_finite(tx, old, grads, small, policy, jnp.bool_(True), kit)
    assert float(out["skipped_grad_norm"]) == 0.0
    updates, _ = tx.update(grads, old.opt_state, old.params)
    params = optax.apply_updates(old.params, updates)
    np.testing.assert_allclose(state.params["w"], params["w"], rtol=1e-6)
    np.testing.assert_allclose(state.ema["w"], 0.5 * old.ema["w"] + 0.5 * params["w"], rtol=1e-6)


def test_skipping_off_adds_no_metric():
    off = Stability(ema_decay=0.0, skip_grad_norm=0.0)
    old = init_state({"w": jnp.ones(3)}, optax.adam(0.1))
    good = {"loss": jnp.float32(0.5), "grad_norm": jnp.float32(1e9)}
    state, out = apply_if_finite(optax.adam(0.1), old, {"w": jnp.ones(3)}, good, "stop", True, off)
    assert "skipped_grad_norm" not in out and state.ema is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.ema.decay=1.0", "training.ema.decay must be in [0, 1)"),
        ("training.ema.decay=-0.1", "training.ema.decay must be in [0, 1)"),
        ("training.skip_grad_norm=-1.0", "training.skip_grad_norm must be >= 0"),
    ],
)
def test_bad_stability_values_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(BASELINE, None, [override])


@pytest.fixture(scope="module")
def stable_run(tmp_path_factory):
    """The tiny baseline with EMA and skipping on, uninterrupted: (workdir, run folder)."""
    workdir = tmp_path_factory.mktemp("stable")
    record, paths = train(workdir, "ref", [*TINY, *STABLE])
    assert record["status"] == "completed"
    return workdir, paths.run_dir


def test_skipped_updates_are_counted_and_ema_is_saved(stable_run):
    _, run_dir = stable_run
    record = metrics(run_dir)
    trains = [r for r in record["history"] if r["split"] == "train"]
    skipped = sum(r["skipped_grad_norm"] for r in trains)
    assert 0 < skipped < record["total_steps"]  # the threshold bites, training goes on
    assert all(r["skipped_steps"] == r["skipped_grad_norm"] for r in trains)
    assert record["skipped_steps"] == skipped
    _, state = read_state(run_dir / "model_last")
    assert set(state) == {"step", "params", "opt_state", "ema"}
    ema, params = jax.tree.leaves(state["ema"]), jax.tree.leaves(state["params"])
    assert any(not np.array_equal(e, p) for e, p in zip(ema, params, strict=True))


def test_validation_and_evaluate_score_the_ema(stable_run, tmp_path):
    workdir, run_dir = stable_run
    record, _ = evaluate_run(run_dir, "best", "val", ["eval.figures=false", "eval.iwae_samples=2"])
    assert record["elbo"] == pytest.approx(record["logged_val_elbo"], rel=1e-6)
    raw, _ = evaluate_run(
        run_dir, "best", "val", ["eval.figures=false", "eval.iwae_samples=2", "eval.use_ema=false"]
    )
    assert raw["elbo"] != pytest.approx(record["elbo"], rel=1e-6)
    # The same run validating its raw params: the same train records, other val records.
    other, _ = train(tmp_path, "raw", [*TINY, *STABLE, "eval.use_ema=false"])
    history = without_timings(metrics(run_dir)["history"])
    trains = [r for r in history if r["split"] == "train"]
    assert trains == [r for r in without_timings(other["history"]) if r["split"] == "train"]
    assert [r for r in history if r["split"] == "val"] != [
        r for r in without_timings(other["history"]) if r["split"] == "val"
    ]


def test_too_many_skipped_updates_fail_the_run_with_the_reason(tmp_path):
    record, _ = train(tmp_path, "r", [*TINY, "training.skip_grad_norm=1e-3"])
    assert record["status"] == "failed"
    assert "gradient norm >= training.skip_grad_norm=0.001" in json.dumps(record)


def test_sigterm_then_resume_with_ema_and_skipping_is_bit_exact(tmp_path, stable_run):
    _, reference = stable_run
    extra = [f"--config.{o}" for o in STABLE]
    proc, log = start(tmp_path, "p", "--config.checkpoint.every_steps=15", *extra)
    run_dir = tmp_path / "checkpoints" / "p"
    wait_for_checkpoint(proc, run_dir)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()
    assert 0 < metrics(run_dir)["stopped_at_step"] < metrics(run_dir)["total_steps"]
    result = run_script("train.py", f"--workdir={tmp_path}", "--run_id=p", "--resume")
    assert result.returncode == 0, result.stderr
    assert_same_run(run_dir, reference)
