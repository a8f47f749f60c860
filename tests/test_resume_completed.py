"""--resume of a completed run says so and leaves its record alone (issue 19, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import BASELINE, TINY


def _snapshot(workdir: Path) -> dict[str, bytes]:
    """Every file of the workdir (runs.csv, the run, its logs) with its content."""
    return {
        str(p.relative_to(workdir)): p.read_bytes()
        for p in sorted(workdir.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def test_resume_of_a_completed_run_says_so_and_writes_nothing(tmp_path, capsys):
    from src.training.cli import train_main as main

    args = [f"--workdir={tmp_path}", "--run_id=done"]
    assert main([f"--config={BASELINE}", *args, *(f"--config.{o}" for o in TINY)]) == 0
    before = _snapshot(tmp_path)
    assert any("tfevents" in name for name in before)
    capsys.readouterr()

    # As the README writes it, and with the original command line repeated.
    for extra in ([], [f"--config={BASELINE}", *(f"--config.{o}" for o in TINY)]):
        assert main([*args, "--resume", *extra]) == 0
        out, err = capsys.readouterr()
        lines = out.splitlines()
        assert len(lines) == 1 and err == "", (out, err)
        assert lines[0].startswith(
            "run done: already completed (88 steps, 2 epochs); best val elbo="
        )
        assert "--config.training.epochs=N with N > 2" in lines[0]
        assert _snapshot(tmp_path) == before  # no runs.csv row, no event file, same metrics.json


def test_a_raised_epochs_still_continues_a_completed_run(tmp_path, capsys):
    from src.training.cli import train_main as main

    args = [f"--workdir={tmp_path}", "--run_id=more"]
    assert main([f"--config={BASELINE}", *args, *(f"--config.{o}" for o in TINY)]) == 0
    rows = (tmp_path / "runs.csv").read_text().count("\n")
    assert main([*args, "--resume", "--config.training.epochs=3"]) == 0
    record = json.loads((tmp_path / "checkpoints" / "more" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["total_steps"] == 132
    assert record["history"][-1]["step"] == 132
    assert (tmp_path / "runs.csv").read_text().count("\n") == rows + 2  # start and end rows
    assert "already completed" not in capsys.readouterr().out
