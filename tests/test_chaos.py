"""Chaos test (slow; run before each release, see CONTRIBUTING.md): kills training at random
moments (SIGKILL at any time, SIGKILL while a checkpoint is being written, SIGTERM), corrupts or
truncates checkpoint files and metrics.json at random, or attacks the run's own files (a
hand-edited config.yaml, a deleted metrics.json, a broken provenance.json, a step copied from
another run: issue 29), and resumes after each blow. Every resume either refuses cleanly (exit 2
or 4, one line, nothing moved; the damage is then undone as an operator would) or continues; at the end, history, best record, final state and TensorBoard
equal those of an uninterrupted run, bit for bit.

    pytest -m slow tests/test_chaos.py                      # seed 0, 8 blows
    CHAOS_SEED=7 CHAOS_ROUNDS=20 pytest -m slow tests/test_chaos.py
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from src.utils.io import read_json
from tests.helpers import BASELINE, REPO, TINY, script_env
from tests.test_resume import assert_same_run, train_in_process
from tests.test_training import _tensorboard_events

SEED = int(os.environ.get("CHAOS_SEED", "0"))
ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "8"))
# 30 epochs of the tiny baseline (1320 steps, about 10 s), a checkpoint every 20 steps, three
# of them kept.
OVERRIDES = [*TINY, "training.epochs=30", "checkpoint.keep_last=3"]


def steps(folder: Path) -> list[int]:
    return (
        sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit()) if folder.is_dir() else []
    )


def launch(workdir: Path, resume: bool) -> tuple[subprocess.Popen, Path]:
    log = workdir / "stderr.txt"
    args = [f"--workdir={workdir}", "--run_id=chaos"]
    if resume:
        args.append("--resume")
    else:
        args += [f"--config={BASELINE}", "--overwrite", *(f"--config.{o}" for o in OVERRIDES)]
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), *args],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        cwd=REPO,
        env=script_env(),
    )
    return proc, log


def blow(proc: subprocess.Popen, run_dir: Path, rng: random.Random) -> str:
    """Kills proc at a random moment; returns how."""
    how = rng.choice(["sigkill", "sigkill after a save", "sigkill during a save", "sigterm"])
    deadline = time.monotonic() + 120
    if how == "sigkill during a save":
        while proc.poll() is None and time.monotonic() < deadline:
            folders = [*(run_dir / "model_last").glob("*"), *(run_dir / "model_best").glob("*")]
            if any("orbax-checkpoint-tmp" in p.name for p in folders):
                break
            time.sleep(0.001)
    elif how == "sigkill after a save":
        before = max(steps(run_dir / "model_last"), default=0)
        while proc.poll() is None and time.monotonic() < deadline:
            if max(steps(run_dir / "model_last"), default=0) > before:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.5))
    else:
        time.sleep(rng.uniform(1.0, 6.0))
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    proc.wait(timeout=120)
    return how


def damage(run_dir: Path, rng: random.Random, other: Path) -> dict[Path, bytes]:
    """Corrupts or truncates a file at random, edits or removes a record file, or copies in a
    step of another run (`other`), or nothing; returns the originals to undo it (a foreign
    step needs no undo: the resume sets it aside)."""
    newest = steps(run_dir / "model_last")
    r = rng.random()
    if r >= 0.7:
        return attack(run_dir, rng, other, newest)
    if r < 0.35 and newest:
        folder = run_dir / "model_last" / str(newest[-1])
        files = sorted(p for p in (folder / "state").rglob("*") if p.is_file())
        if (folder / "checksums.json").is_file() and files:  # a flip only checksums can see
            path = rng.choice(files)
            data = path.read_bytes()
            flipped = bytearray(data)
            at = rng.randrange(len(data))
            flipped[at] ^= 0xFF
            path.write_bytes(bytes(flipped))
            return {path: data}
    if r < 0.6 and newest:
        folder = run_dir / "model_last" / str(newest[-1])
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.parent.name == "d")
        if files:
            path = rng.choice(files)
            data = path.read_bytes()
            path.write_bytes(data[: rng.randrange(len(data))])
            return {path: data}
    if r < 0.7 and (run_dir / "metrics.json").is_file():
        path = run_dir / "metrics.json"
        data = path.read_bytes()
        path.write_bytes(data[: rng.randrange(len(data))])
        return {path: data}
    return {}


RECORD_FILES = ("config.yaml", "metrics.json", "provenance.json")


def attack(run_dir: Path, rng: random.Random, other: Path, newest: list[int]) -> dict[Path, bytes]:
    """The attacks of issue 29 on a run's own files: a hand-edited config.yaml (exit 2), a
    deleted metrics.json or a provenance.json that is not an object (exit 4), a step copied
    from another run (set aside by the resume)."""
    kind = rng.choice(["edit config", "delete metrics", "break provenance", "foreign step"])
    config, metrics, prov = (run_dir / n for n in RECORD_FILES)
    if kind == "edit config" and config.is_file():
        data = config.read_bytes()
        config.write_bytes(data.replace(b"beta: 1.0", b"beta: 0.5"))
        return {config: data} if config.read_bytes() != data else {}
    if kind == "delete metrics" and metrics.is_file() and newest:
        data = metrics.read_bytes()
        metrics.unlink()
        return {metrics: data}
    if kind == "break provenance" and prov.is_file():
        data = prov.read_bytes()
        prov.write_text("[]")
        return {prov: data}
    theirs = steps(other / "model_last")
    if kind == "foreign step" and newest and theirs:
        shutil.copytree(
            other / "model_last" / str(theirs[-1]), run_dir / "model_last" / str(newest[-1] + 1)
        )
    return {}


def restore(undo: dict[Path, bytes]) -> None:
    """Writes the damaged files back (those still there: a resume may have set a damaged step
    aside, or a later save rotated it out; a deleted record file comes back)."""
    for path, data in undo.items():
        if path.is_file() or path.name in RECORD_FILES:
            path.write_bytes(data)


def listing(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))


@pytest.mark.slow
def test_random_kills_and_damage_never_change_the_result(tmp_path):
    train_in_process(tmp_path / "ref", "ref", list(OVERRIDES))
    reference = tmp_path / "ref" / "checkpoints" / "ref"
    workdir = tmp_path / "chaos"
    workdir.mkdir()
    run_dir = workdir / "checkpoints" / "chaos"
    rng = random.Random(SEED)
    events: list[str] = []
    undo: dict[Path, bytes] = {}
    for _ in range(ROUNDS):
        resume = bool(steps(run_dir / "model_last"))
        proc, log = launch(workdir, resume)
        how = blow(proc, run_dir, rng)
        err = log.read_text()
        if proc.returncode == 0:
            events.append("completed")
            break
        if proc.returncode in (2, 4) and undo and "has no checkpoint" not in err:
            # refused: one line, and nothing moved
            lines = err.strip().splitlines()
            assert undo and len(lines) == 1 and lines[0].startswith("error: "), err
            events.append("refused")
            before = listing(run_dir)
            restore(undo)  # as an operator would
            back = {str(p.relative_to(run_dir)) for p in undo if p.name in RECORD_FILES}
            assert set(listing(run_dir)) - back == set(before) - back, err
            undo = {}
            continue
        if resume and proc.returncode == 2 and "has no checkpoint" in err:
            pytest.fail(err)
        assert proc.returncode in (-signal.SIGKILL, 128 + signal.SIGTERM), err
        events.append(how)
        damaged = damage(run_dir, rng, reference)
        for path, data in damaged.items():  # the first original of each file, to undo it
            undo.setdefault(path, data)
            events.append(f"damaged {path.relative_to(run_dir)}")
    while "completed" not in events:  # the end, without blows; damage may still refuse once
        proc, log = launch(workdir, resume=bool(steps(run_dir / "model_last")))
        if proc.wait(timeout=600) in (2, 4) and undo:
            restore(undo)
            undo = {}
            events.append("refused")
            continue
        assert proc.returncode == 0, log.read_text()
        events.append("completed")
    print("chaos events:", events)
    assert_same_run(run_dir, reference)
    history = read_json(run_dir / "metrics.json")["history"]
    shown = Counter(
        (e.step, v.tag)
        for e in _tensorboard_events(workdir / "logs" / "chaos")
        if e.HasField("summary")
        for v in e.summary.value
        if not v.tag.startswith("model/")
    )
    expected = Counter(
        (r["step"], f"{r['split']}/{k}")
        for r in history
        for k, v in r.items()
        if k not in ("step", "split") and isinstance(v, int | float)
    )
    expected.update(
        (r["step"], f"{r['split']}/{k}/{d}")
        for r in history
        for k, v in r.items()
        if isinstance(v, list)
        for d in range(len(v))
    )
    shown_vectors = {k for k in shown if k[1].count("/") == 1 and k not in expected}
    assert {k: c for k, c in shown.items() if k not in shown_vectors} == expected, events
    shutil.rmtree(tmp_path / "ref")
