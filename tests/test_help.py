"""`--help` of the scripts: the overrides, the group flags, examples and where keys are documented."""

from __future__ import annotations

import re

import yaml

from src.utils.config import load_config
from tests.helpers import BASELINE, REPO, run_script


def _help(script: str) -> str:
    result = run_script(script, "--help", timeout=60, env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def _example_overrides(text: str) -> list[str]:
    """The 'KEY=VALUE' of every '--config.KEY=VALUE' example, placeholders (=N, =VALUE) left out."""
    out = []
    for key, value in re.findall(r"--config\.([a-z_.]+)=(\S+)", text):
        if value.endswith("]") and "[" not in value:  # the end of an optional [--config.k=v]
            value = value[:-1]
        if not value.isupper():
            out.append(f"{key}={value}")
    return out


def test_train_help_documents_overrides_groups_and_the_schema():
    text = _help("train.py")
    for needed in (
        "--config=FILE",
        "--config.SECTION.KEY=VALUE",
        "--config.training.lr=3e-4",
        "VALUE is read as YAML",
        "--model NAME",
        "--data NAME",
        "configs/default.yaml",
        "--resume",
        "--overwrite",
        "status 2",
    ):
        assert needed in text, needed
    schema = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    listing = text.split("Sections:")[1].split("Every key")[0]
    assert re.findall(r"[a-z_]+", listing) == list(schema)
    # The group flags name the files they can pick.
    for group in ("model", "data"):
        for path in (REPO / "configs" / group).glob("*.yaml"):
            assert path.stem in text
    # Every example in the help is a valid command line for the baseline and --model=conv.
    overrides = _example_overrides(text)
    assert len(overrides) >= 5
    cfg = load_config(BASELINE, {"model": "conv"}, overrides)
    assert cfg.training.lr == 3e-4 and cfg.model.latent_dim == 32
    assert cfg.training.kl.warmup == "cyclical"


def test_train_help_exits_before_anything_is_read_or_written(tmp_path):
    """--help wins over the other flags: exit 0, nothing created, no config read."""
    result = run_script(
        "train.py", "--config=missing.yaml", f"--workdir={tmp_path / 'w'}", "--help", timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "w").exists()


def test_evaluate_help_documents_the_eval_overrides():
    text = _help("evaluate.py")
    for needed in ("--run_dir", "--config.eval.KEY=VALUE", "configs/default.yaml", "the run's"):
        assert needed in text, needed
    schema = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    for key in schema["eval"]:
        assert key in text, key
    overrides = _example_overrides(text)
    assert overrides and all(o.startswith("eval.") for o in overrides)
    load_config(BASELINE, {}, overrides)


def test_sweep_help_says_where_the_sweep_and_config_keys_are():
    text = _help("sweep.py")
    assert "docs/experiments.md" in text
    assert "configs/default.yaml" in text
    assert "python scripts/sweep.py --config=configs/sweep/beta.yaml" in text
    assert (REPO / "configs" / "sweep" / "beta.yaml").is_file()
