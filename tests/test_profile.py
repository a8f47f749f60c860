"""profile.*: a JAX profiler trace of a window of steps in the run's log folder (issue 19)."""

from __future__ import annotations

import json

import pytest

from src.utils.config import load_config
from src.utils.errors import ConfigError
from tests.helpers import BASELINE, TINY, without_timings


def _history(workdir, run):
    record = json.loads((workdir / "checkpoints" / run / "metrics.json").read_text())
    return without_timings(record["history"])


def test_profile_writes_a_trace_and_changes_no_number(tmp_path, capsys):
    from src.training.cli import train_main as main

    base = [f"--config={BASELINE}", f"--workdir={tmp_path}", *(f"--config.{o}" for o in TINY)]
    profile = ["--config.profile.enabled=true", "--config.profile.start_step=10"]
    assert main([*base, "--run_id=traced", *profile, "--config.profile.num_steps=5"]) == 0
    traces = list((tmp_path / "logs" / "traced" / "plugins" / "profile").glob("*/*"))
    names = {p.name for p in traces}
    assert any(n.endswith(".xplane.pb") for n in names), names  # TensorBoard's Profile tab
    assert "perfetto_trace.json.gz" in names  # ui.perfetto.dev
    assert "profile: trace of steps from 10 in " in capsys.readouterr().err

    assert main([*base, "--run_id=plain"]) == 0
    assert not (tmp_path / "logs" / "plain" / "plugins").exists()  # off by default
    assert _history(tmp_path, "traced") == _history(tmp_path, "plain")


def test_profile_keys_are_checked():
    with pytest.raises(ConfigError, match="profile.num_steps"):
        load_config(BASELINE, overrides=["profile.num_steps=0"])
    with pytest.raises(ConfigError, match="profile.start_step"):
        load_config(BASELINE, overrides=["profile.start_step=-1"])
