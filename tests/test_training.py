"""End-to-end training: determinism, the complete run record, and user errors at the CLI."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from src.utils.config import load_config, load_saved_config
from tests.helpers import (
    BASELINE,
    assert_same_arrays,
    read_state,
    run_script,
    train,
    without_timings,
)


def test_same_seed_gives_identical_history_and_params(tmp_path, tiny_overrides):
    a, paths_a = train(tmp_path, "a", tiny_overrides)
    b, paths_b = train(tmp_path, "b", tiny_overrides)
    assert without_timings(a["history"]) == without_timings(b["history"])
    assert_same_arrays(read_state(paths_a.last)[1], read_state(paths_b.last)[1])


def test_different_seed_gives_different_numbers(tmp_path, tiny_overrides):
    a, _ = train(tmp_path, "a", tiny_overrides)
    b, _ = train(tmp_path, "b", [*tiny_overrides, "training.seed=7"])
    assert a["history"][0]["loss"] != b["history"][0]["loss"]


def test_training_lowers_the_loss(tmp_path, tiny_overrides):
    record, _ = train(tmp_path, "r", [*tiny_overrides, "training.epochs=4"])
    records = [r for r in record["history"] if r["split"] == "train"]
    assert records[-1]["loss"] < 0.8 * records[0]["loss"]


def test_cli_writes_a_complete_run_record(tmp_path, tiny_overrides):
    result = run_script(
        "train.py",
        f"--config={BASELINE}",
        f"--workdir={tmp_path}",
        "--run_id=smoke",
        *[f"--config.{o}" for o in tiny_overrides],
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "checkpoints" / "smoke"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.yaml",
        "metrics.json",
        "model_best",
        "model_last",
        "provenance.json",
    ]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["run_id"] == "smoke"
    assert metrics["param_count"] > 0 and metrics["model_bytes"] == 4 * metrics["param_count"]
    train = [r for r in metrics["history"] if r["split"] == "train"]
    val = [r for r in metrics["history"] if r["split"] == "val"]
    for key in ("loss", "elbo", "recon", "kl", "kl_per_dim", "lr", "grad_norm", "examples_per_sec"):
        assert key in train[-1], key
    for key in ("elbo", "recon", "kl", "kl_per_dim", "active_units"):
        assert key in val[-1], key
    assert len(val[-1]["kl_per_dim"]) == 4
    assert val[-1]["elbo"] == pytest.approx(-(val[-1]["recon"] + val[-1]["kl"]))
    best = metrics["best"]
    assert best["metric"] == "elbo" and best["value"] == max(r["elbo"] for r in val)
    assert metrics["final"]["train"] == train[-1] and metrics["final"]["val"] == val[-1]
    # The saved config reloads to the config the run used.
    expected = load_config(BASELINE, overrides=tiny_overrides)
    assert load_saved_config(run_dir / "config.yaml") == expected
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert {"git", "command", "packages", "devices", "seed", "xla_flags"} <= set(prov)
    assert "--xla_gpu_deterministic_ops=true" in prov["xla_flags"]
    # Checkpoints: best at the best val step, last at the final step.
    assert [p.name for p in (run_dir / "model_best").iterdir() if p.name.isdigit()] == [
        str(best["step"])
    ]
    last_steps = [int(p.name) for p in (run_dir / "model_last").iterdir() if p.name.isdigit()]
    assert max(last_steps) == metrics["total_steps"]
    assert any((tmp_path / "logs" / "smoke").glob("events.out.tfevents.*"))


def _hashes(folder: Path) -> dict[str, str]:
    """Every file's hash, but the run locks (checkpoints/.<run_id>.lock, which any command on a
    run takes first and which name its last holder's PID)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not (p.parent.name == "checkpoints" and p.name.endswith(".lock"))
    }


def test_existing_run_id_is_refused_and_left_untouched(tmp_path, tiny_overrides):
    train(tmp_path, "taken", tiny_overrides)
    before = _hashes(tmp_path)
    result = run_script(
        "train.py", f"--config={BASELINE}", f"--workdir={tmp_path}", "--run_id=taken"
    )
    assert result.returncode == 2
    assert "already exists" in result.stderr and "Traceback" not in result.stderr
    assert _hashes(tmp_path) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config=configs/experiment/nope.yaml"], "config file not found"),
        ([f"--config={BASELINE}", "--config.training.lrr=1"], "did you mean 'training.lr'"),
        ([f"--config={BASELINE}", "--config.training.batch_size=big"], "expected int, got str"),
        ([f"--config={BASELINE}", "--model=nope"], "model='nope'"),
        ([f"--config={BASELINE}", "--run_id=../escape"], "--run_id '../escape'"),
        (
            [f"--config={BASELINE}", "--config.training.batch_size=5000"],
            "exceeds the training split",
        ),
        ([f"--config={BASELINE}", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    result = run_script("train.py", *args, f"--workdir={tmp_path}", timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not any((tmp_path / "checkpoints").glob("*/metrics.json"))


def test_saved_config_is_plain_yaml(tmp_path, tiny_overrides):
    _, paths = train(tmp_path, "y", tiny_overrides)
    saved = yaml.safe_load(paths.config.read_text())
    assert saved["model"]["hidden_dims"] == [32]


def _recorder(tmp_path: Path, tensorboard: bool, write_every_secs: float, resume: bool = False):
    """A writing Recorder in tmp_path (metrics.json, logs/), console off."""
    from src.training.run.recorder import Recorder

    return Recorder(
        tmp_path / "metrics.json",
        tmp_path / "logs",
        {"run_id": "r"},
        tensorboard=tensorboard,
        console=False,
        write=True,
        resume=resume,
        write_every_secs=write_every_secs,
    )


def test_records_are_written_at_most_every_write_interval(tmp_path):
    """metrics.json is rewritten for a record only when write_every_secs have passed;
    save() (before checkpoints, at the end) always writes."""
    path = tmp_path / "metrics.json"
    recorder = _recorder(tmp_path, tensorboard=False, write_every_secs=3600.0)
    recorder.log(10, "train", {"loss": 1.0})
    assert [r["step"] for r in json.loads(path.read_text())["history"]] == [10]
    recorder.log(20, "train", {"loss": 0.5})
    recorder.log(20, "val", {"elbo": -3.0})
    assert [r["step"] for r in json.loads(path.read_text())["history"]] == [10]
    recorder.save()
    text = path.read_text()
    assert [r["step"] for r in json.loads(text)["history"]] == [10, 20, 20]
    # One history record per line, so that the file stays readable.
    assert sum(line.startswith('    {"step": ') for line in text.splitlines()) == 3


def test_written_history_is_encoded_afresh_after_truncate_and_resume(tmp_path):
    """The Recorder keeps each record's encoded line; the file must stay what encoding the
    whole record now would give, after a truncation and in a resumed Recorder."""
    from src.training.run.recorder import metrics_text

    path = tmp_path / "metrics.json"
    recorder = _recorder(tmp_path, tensorboard=False, write_every_secs=0.0)
    for step in (10, 20, 30):
        recorder.log(step, "train", {"loss": 1.0 / step, "kl_per_dim": [step, float("nan")]})
    recorder.truncate(20)
    recorder.log(30, "val", {"elbo": -2.0})
    assert path.read_text() == metrics_text(recorder.data)
    assert [(r["step"], r["split"]) for r in json.loads(path.read_text())["history"]] == [
        (10, "train"),
        (20, "train"),
        (30, "val"),
    ]
    resumed = _recorder(tmp_path, tensorboard=False, write_every_secs=0.0, resume=True)
    resumed.truncate(10)
    resumed.log(20, "train", {"loss": 0.25})
    assert path.read_text() == metrics_text(resumed.data)
    assert [r["step"] for r in json.loads(path.read_text())["history"]] == [10, 20]


def _tensorboard_events(log_dir: Path) -> list:
    """The Event protos of the event files in log_dir (TFRecord: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            events.append(Event.FromString(data[at + 12 : at + 12 + length]))
            at += 12 + length + 4
    return events


def test_tensorboard_gets_every_value_of_a_record_in_one_event(tmp_path):
    recorder = _recorder(tmp_path, tensorboard=True, write_every_secs=0.0)
    recorder.log(40, "train", {"loss": 1.5, "kl_per_dim": [0.25, 2.0, 0.0], "skipped_steps": 0})
    recorder.log(40, "val", {"elbo": -3.0})
    recorder.close()
    records = [e for e in _tensorboard_events(tmp_path / "logs") if e.HasField("summary")]
    assert [e.step for e in records] == [40, 40]
    train = {v.tag: v for v in records[0].summary.value}
    assert sorted(train) == [
        "train/kl_per_dim",
        "train/kl_per_dim/0",
        "train/kl_per_dim/1",
        "train/kl_per_dim/2",
        "train/loss",
        "train/skipped_steps",
    ]
    assert train["train/loss"].simple_value == 1.5
    assert train["train/kl_per_dim/1"].simple_value == 2.0
    histogram = train["train/kl_per_dim"].histo
    assert (histogram.num, histogram.min, histogram.max, histogram.sum) == (3, 0.0, 2.0, 2.25)
    assert [(v.tag, v.simple_value) for v in records[1].summary.value] == [("val/elbo", -3.0)]


def test_tensorboard_takes_non_finite_vectors(tmp_path):
    """numpy cannot bin inf or NaN: such a vector gets its scalars and no histogram."""
    recorder = _recorder(tmp_path, tensorboard=True, write_every_secs=0.0)
    recorder.log(20, "train", {"kl_per_dim": [float("inf"), float("nan")]})
    recorder.close()
    (event,) = [e for e in _tensorboard_events(tmp_path / "logs") if e.HasField("summary")]
    assert [v.tag for v in event.summary.value] == ["train/kl_per_dim/0", "train/kl_per_dim/1"]


def test_metrics_text_is_the_json_of_the_record():
    from src.training.run.recorder import metrics_text

    records: list[dict[str, Any]] = [
        {"run_id": "r", "best": None, "final": {}, "history": []},
        {"run_id": "r", "nan": float("nan"), "history": [{"step": 1, "kl_per_dim": [0.5, 1]}]},
    ]
    for data in records:
        assert json.dumps(json.loads(metrics_text(data))) == json.dumps(data)


def test_copy_tree_survives_the_donation_of_the_original():
    """The model_best candidate is held across steps that donate the state it was copied from."""
    import jax
    import jax.numpy as jnp

    from src.training.loop import copy_tree

    state = {"w": jnp.arange(3.0), "step": jnp.int32(7)}
    held = copy_tree(state)
    jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)(state)
    assert state["w"].is_deleted()
    np.testing.assert_array_equal(held["w"], [0.0, 1.0, 2.0])
    assert int(held["step"]) == 7
