"""EXPERIMENTS.md discipline: the completeness check and the entry drafted from a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from src.experiments.experiment_log import (
    FIELDS,
    PLACEHOLDER,
    check_log,
    next_number,
    parse_entries,
    render_entry,
)
from src.utils.config import load_config, save_config
from tests.helpers import BASELINE, REPO, run_script

CONFIG = "configs/experiment/baseline.yaml"

# The seed format, written the way the lead writes entries: qualifier after a field name,
# fields spread over several lines, a table and a code block inside Results.
COMPLETE = f"""# Experiments

Intro text.

## Experiment 001

Date: 2026-11-24

Goal: A reference VAE.

Config: `{CONFIG}` (MLP, 30 epochs).

Changes: none.

Results (validation split, 3 seeds):

| seed | val ELBO |
| --- | --- |
| 42 | -24.8 |

```
python scripts/train.py --config={CONFIG}
# a comment in the command block
```

Observations:
- The KL sits in a few dimensions.

Next Step: a beta sweep.
"""


def test_the_repository_log_documents_every_experiment_config():
    configs = [
        str(p.relative_to(REPO)) for p in sorted((REPO / "configs/experiment").glob("*.yaml"))
    ]
    assert configs
    assert check_log((REPO / "EXPERIMENTS.md").read_text(), configs) == []


def test_complete_entry_in_the_seed_format_passes():
    assert check_log(COMPLETE, [CONFIG]) == []
    (entry,) = parse_entries(COMPLETE)
    assert entry.number == 1 and set(entry.fields) == set(FIELDS)
    assert "-24.8" in entry.fields["Results"] and "a comment" in entry.fields["Results"]
    assert entry.fields["Observations"] == "- The KL sits in a few dimensions."


def test_a_config_without_entry_fails():
    problems = check_log(COMPLETE, [CONFIG, "configs/experiment/beta.yaml"])
    assert problems == [
        "configs/experiment/beta.yaml has no entry: name it in an entry's 'Config:' field "
        "(draft one with scripts/log_experiment.py --run_dir=...)"
    ]
    # Mentioning the config elsewhere (not in Config:) does not count.
    elsewhere = COMPLETE.replace(
        "Next Step: a beta sweep.", "Next Step: configs/experiment/beta.yaml"
    )
    assert len(check_log(elsewhere, [CONFIG, "configs/experiment/beta.yaml"])) == 1


@pytest.mark.parametrize("field", FIELDS)
def test_a_missing_field_fails(field):
    lines = [ln for ln in COMPLETE.splitlines() if not ln.lower().startswith(field.lower())]
    problems = check_log("\n".join(lines), [CONFIG] if field != "Config" else [])
    assert problems == [f"Experiment 001 (line 5): missing field '{field}:'"]


def test_empty_field_placeholder_and_duplicate_number_fail():
    empty = COMPLETE.replace("Changes: none.", "Changes:")
    assert check_log(empty, [CONFIG]) == ["Experiment 001 (line 5): field 'Changes:' is empty"]
    todo = COMPLETE.replace("Next Step: a beta sweep.", f"Next Step: {PLACEHOLDER}: later>")
    assert "still has a '<fill in ...>' note" in check_log(todo, [CONFIG])[0]
    twice = COMPLETE + COMPLETE.split("# Experiments", 1)[1].split("Intro text.", 1)[1]
    assert any("number already used" in p for p in check_log(twice, [CONFIG]))
    assert next_number(twice) == 2


def test_a_later_section_ends_an_entry():
    text = COMPLETE.replace("Next Step: a beta sweep.", "## Notes\n\nNext Step: not this one")
    assert check_log(text, [CONFIG]) == ["Experiment 001 (line 5): missing field 'Next Step:'"]


def test_check_script_exit_status(tmp_path: Path):
    (tmp_path / "configs" / "experiment").mkdir(parents=True)
    (tmp_path / "configs" / "experiment" / "baseline.yaml").write_text("{}\n")
    (tmp_path / "EXPERIMENTS.md").write_text(COMPLETE)
    ok = run_script("check_experiments.py", f"--repo={tmp_path}", timeout=60)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "configs" / "experiment" / "wide.yaml").write_text("{}\n")
    bad = run_script("check_experiments.py", f"--repo={tmp_path}", timeout=60)
    assert bad.returncode == 1 and "configs/experiment/wide.yaml has no entry" in bad.stderr


def fake_run(tmp_path: Path) -> Path:
    """A run folder as train.py leaves it (no training needed to render an entry)."""
    run_dir = tmp_path / "checkpoints" / "beta-0.5"
    run_dir.mkdir(parents=True)
    save_config(load_config(BASELINE, overrides=["training.kl.beta=0.5"]), run_dir / "config.yaml")
    val = {"elbo": -25.5, "recon": 23.0, "kl": 2.5, "active_units": 7}
    metrics = {
        "run_id": "beta-0.5",
        "config_hash": "abcdef123456",
        "param_count": 105312,
        "total_steps": 660,
        "status": "completed",
        "best": {"step": 640, "metric": "elbo", "value": -25.25},
        "final": {"val": val, "train": {"loss": 24.0}},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    prov = {
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "started_at": "2026-11-25T01:02:03+00:00",
        "command": [
            "/usr/bin/python",
            str(REPO / "scripts" / "train.py"),
            f"--config={BASELINE}",
            "--run_id=beta-0.5",
            "--config.training.kl.beta=0.5",
        ],
    }
    (run_dir / "provenance.json").write_text(json.dumps(prov))
    return run_dir


def test_rendered_entry_has_every_field(tmp_path: Path):
    entry = render_entry(fake_run(tmp_path), BASELINE, 7, REPO)
    (parsed,) = parse_entries(entry)
    assert parsed.number == 7 and set(parsed.fields) == set(FIELDS)
    fields = parsed.fields
    assert fields["Date"] == "2026-11-25"
    assert fields["Goal"] == load_config(BASELINE).experiment.goal
    assert fields["Config"].startswith(CONFIG)
    assert "`python scripts/train.py --config=configs/experiment/baseline.yaml" in fields["Config"]
    assert fields["Changes"] == f"against {CONFIG}: training.kl.beta: 1.0 -> 0.5"
    for text in ("best val elbo -25.2500 at step 640 of 660", "active units 7/16", "105312"):
        assert text in fields["Results"]
    # Only the researcher's fields are left to fill in, and the check insists on them.
    assert check_log(entry, [CONFIG]) == [
        f"Experiment 007 (line 1): field '{f}:' still has a '<fill in ...>' note"
        for f in ("Observations", "Next Step")
    ]


def test_log_experiment_script(tmp_path: Path):
    run_dir = fake_run(tmp_path)
    result = run_script("log_experiment.py", f"--run_dir={run_dir}", timeout=60)
    assert result.returncode == 0, result.stderr
    number = next_number((REPO / "EXPERIMENTS.md").read_text())
    assert result.stdout.startswith(f"## Experiment {number:03d}\n")
    assert all(f"\n{f}: " in result.stdout for f in FIELDS)
    missing = run_script("log_experiment.py", f"--run_dir={tmp_path}", timeout=60)
    assert missing.returncode == 2 and "no config.yaml" in missing.stderr
