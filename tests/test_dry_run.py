"""train.py --dry_run: the config checked, the model's size, cost and memory, nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.helpers import BASELINE, TINY, run_script


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_dry_run_writes_nothing_and_reports_the_run(tmp_path):
    workdir = tmp_path / "work"
    result = run_script(
        "train.py",
        f"--config={BASELINE}",
        f"--workdir={workdir}",
        "--run_id=dry",
        *(f"--config.{o}" for o in TINY),
        "--dry_run",
    )
    assert result.returncode == 0, result.stderr
    assert not workdir.exists()  # no run folder, no runs.csv, no lock
    out = result.stdout
    assert out.startswith("dry run: nothing is trained or written\n")
    assert f"run:      {workdir / 'checkpoints' / 'dry'} (would be created)" in out
    assert "train 1,437, val 180, test 180" in out
    assert "steps:    88 = 2 epochs x 44 steps of batch 32" in out
    assert re.search(r"^encoder/net/layers/0/kernel +\(64, 32\) +float32 +2,048$", out, re.M)
    assert re.search(r"FLOPs: +[\d.]+ [kMG]?FLOP per step", out)
    assert re.search(r"device memory: +about [\d.]+ [KMG]i?B per device", out)

    # The parameter count of a real run of the same config.
    from src.training.cli import train_main as main

    args = [f"--config={BASELINE}", f"--workdir={workdir}", "--run_id=real"]
    assert main([*args, *(f"--config.{o}" for o in TINY)]) == 0
    record = json.loads((workdir / "checkpoints" / "real" / "metrics.json").read_text())
    found = re.search(r"^model: +mlp: ([\d,]+) parameters", out, re.M)
    assert found is not None, out
    count = int(found[1].replace(",", ""))
    assert count == record["param_count"]

    # --resume --dry_run reads the saved run and changes nothing.
    before = _files(workdir)
    assert main([f"--workdir={workdir}", "--run_id=real", "--resume", "--dry_run"]) == 0
    assert _files(workdir) == before


def test_dry_run_validates_the_config(tmp_path):
    result = run_script(
        "train.py",
        f"--config={BASELINE}",
        f"--workdir={tmp_path}",
        "--config.training.batch_size=0",
        "--dry_run",
    )
    assert result.returncode == 2 and "training.batch_size" in result.stderr
    assert list(tmp_path.iterdir()) == []
