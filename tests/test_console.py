"""The console of a run: header, parameter table, one readable line per record (issue 19)."""

from __future__ import annotations

import io
import json
import re

import pytest

from src.training.run import console as console_module
from src.training.run.console import Console, number, param_table
from tests.helpers import BASELINE, TINY, run_script

# TINY shrinks the baseline: 1437 training examples / batch 32 = 44 steps per epoch, 2 epochs.
TOTAL_STEPS = 88


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny baseline run with the console on: (stderr, stdout, workdir)."""
    workdir = tmp_path_factory.mktemp("console")
    result = run_script(
        "train.py",
        f"--config={BASELINE}",
        f"--workdir={workdir}",
        "--run_id=tiny",
        *(f"--config.{o}" for o in TINY),
        "--config.logging.console=true",
        "--config.training.kl.warmup=linear",
        "--config.training.kl.warmup_steps=30",
    )
    assert result.returncode == 0, result.stderr
    return result.stderr, result.stdout, workdir


def _lines(stderr: str, split: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"[{split:5s}]")]


def test_header_names_the_run_its_folders_devices_size_and_data(tiny_run):
    stderr, _, workdir = tiny_run
    record = json.loads((workdir / "checkpoints" / "tiny" / "metrics.json").read_text())
    head = stderr.split("[train]")[0]
    assert head.startswith("run tiny (experiment baseline, config ")
    assert f"record:   {workdir / 'checkpoints' / 'tiny'}" in head
    assert f"logs: {workdir / 'logs' / 'tiny'}" in head
    assert re.search(r"devices:  \d+ x cpu.*backend jit", head)
    assert f"{record['param_count']:,} parameters" in head
    assert f"{TOTAL_STEPS} steps = 2 epochs x 44 steps of batch 32" in head
    assert "train 1,437, val 180, test 180" in head
    assert f"train_bound {record['train_bound']}" in head
    # The constant fields, stated once
    assert "kl_weight=0 lr=0.001000 skipped_steps=0" in head


def test_parameter_table_is_printed_and_saved_in_the_log_folder(tiny_run):
    stderr, _, workdir = tiny_run
    record = json.loads((workdir / "checkpoints" / "tiny" / "metrics.json").read_text())
    table = (workdir / "logs" / "tiny" / "params.txt").read_text()
    assert table.splitlines()[0].split() == ["parameter", "shape", "dtype", "count"]
    assert re.search(r"^encoder/net/layers/0/kernel +\(64, 32\) +float32 +2,048$", table, re.M)
    assert re.search(rf"^total .* {record['param_count']:,}$", table, re.M)
    assert table.rstrip("\n") in stderr


def test_train_lines_show_progress_and_consistent_numbers(tiny_run):
    stderr, _, _ = tiny_run
    lines = _lines(stderr, "train")
    assert len(lines) == TOTAL_STEPS // 10 + 1  # every 10 steps and the last step
    for line in lines:
        assert re.match(
            rf"\[train\] step \d+/{TOTAL_STEPS} epoch [12]/2 \d+:\d\d eta \d+:\d\d loss=", line
        ), line
        for key in ("loss", "elbo", "recon", "kl", "grad_norm", "examples_per_sec"):
            assert re.search(rf" {key}=-?\d", line), (key, line)
        assert "e+" not in line and "e-" not in line, line  # positional numbers
    assert lines[-1].startswith(f"[train] step {TOTAL_STEPS}/{TOTAL_STEPS} epoch 2/2")
    # The first interval compiled the step: its rate says so.
    assert re.search(r"examples_per_sec=\S+ \(incl\. \d+\.\d\d s compile\)", lines[0])
    # lr and skipped_steps never change: only the header shows them. kl_weight rises over the
    # first 30 steps (linear warm-up), then stays at 1: shown on those lines only.
    assert not any("lr=" in line or "skipped_steps=" in line for line in lines)
    weights = [re.search(r"kl_weight=(\S+)", line) for line in lines]
    assert [w is not None for w in weights[:5]] == [True, True, True, True, False]
    fourth = weights[3]
    assert fourth is not None and fourth.group(1) == "1.000" and not any(weights[4:])


def test_validation_lines_and_no_control_characters(tiny_run):
    stderr, stdout, _ = tiny_run
    val = _lines(stderr, "val")
    assert len(val) == 5  # steps 20, 40, 60, 80 and 88
    assert re.match(r"\[val  \] step 20/88 elbo=-\d+\.\d+ .* num_examples=180$", val[0])
    assert all("num_examples" not in line for line in val[1:])
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", stderr + stdout)  # no \r, no colours


def test_metrics_json_keeps_every_field(tiny_run):
    _, _, workdir = tiny_run
    record = json.loads((workdir / "checkpoints" / "tiny" / "metrics.json").read_text())
    train = [r for r in record["history"] if r["split"] == "train"]
    for key in ("kl_weight", "lr", "skipped_steps", "examples_per_sec", "kl_per_dim"):
        assert all(key in r for r in train), key


def test_number_format_fixed_significant_digits():
    assert [number(v) for v in (1735.0, 26683.0, -111.84, 0.70471, 1.0, 13)] == [
        "1735",
        "26680",
        "-111.8",
        "0.7047",
        "1.000",
        "13",
    ]
    assert number(1e-6) == "1.000e-06" and number(float("nan")) == "nan"


def test_console_repeats_slow_fields_only_when_they_change(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(console_module, "compile_seconds", lambda: clock[0])
    out = io.StringIO()
    c = Console(total_steps=40, steps_per_epoch=10, epochs=4, stream=out)
    c.header(["head"], {"lr": 0.001, "kl_weight": 1.0})
    clock[0] = 2.0  # compiled during the first interval
    c.interval_end()
    c.record(
        10,
        "train",
        {"step": 10, "loss": 1.0, "lr": 0.001, "kl_weight": 1.0, "examples_per_sec": 5.0},
    )
    with c.untimed():  # validation compiles: not the next interval's
        clock[0] = 3.0
    c.interval_end()
    c.record(
        20,
        "train",
        {"step": 20, "loss": 2.0, "lr": 0.0005, "kl_weight": 1.0, "examples_per_sec": 9.0},
    )
    lines = out.getvalue().splitlines()
    assert lines[0] == "head"
    assert "examples_per_sec=5.000 (incl. 2.00 s compile)" in lines[1] and "lr=" not in lines[1]
    assert lines[2].endswith("examples_per_sec=9.000 lr=0.0005000")
    assert "epoch 2/4" in lines[2]


def test_param_table_of_an_abstract_tree():
    import jax
    import numpy as np

    tree = {"a": {"w": jax.ShapeDtypeStruct((3, 4), np.float32)}, "b": np.zeros(5, np.float32)}
    table = param_table(tree).splitlines()
    assert table[1].split() == ["a/w", "(3,", "4)", "float32", "12"]
    assert table[-1].split() == ["total", "68", "B", "17"]


def test_readme_shows_the_console_as_it_is(tiny_run):
    """The README's captured console has the header labels and line shapes of a real run."""
    from tests.helpers import REPO

    readme = (REPO / "README.md").read_text()
    block = readme.split("### What a run's console looks like")[1].split("```")[1]
    stderr, _, _ = tiny_run
    labels = [line.split(":")[0] for line in block.splitlines() if line.startswith("  ")]
    assert labels == [line.split(":")[0] for line in stderr.splitlines() if line.startswith("  ")]
    shape = r"\[train\] step \d+/\d+ epoch \d+/\d+ \d+:\d\d eta \d+:\d\d loss=\S+ elbo=\S+ recon="
    readme_train = [line for line in block.splitlines() if line.startswith("[train]")]
    assert readme_train and all(re.match(shape, line) for line in readme_train)
