"""Sweeps: file validation, trial expansion, run ids, resumable parallel runs, the summary."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from src.experiments import runner
from src.experiments.spec import expand, format_value, load_sweep
from src.utils.config import load_saved_config, parse_override
from src.utils.errors import ConfigError, UserError
from tests.helpers import BASELINE, TINY, run_script

# The tiny settings with one epoch: 44 steps per trial.
SWEEP_OVERRIDES = {**dict(parse_override(o) for o in TINY), "training.epochs": 1}


def write_sweep(folder: Path, name: str = "s", **fields) -> Path:
    body = {"name": name, "experiment": str(BASELINE), **fields}
    path = folder / f"{name.replace('/', '_')}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# --- Expansion and validation (no training).


def test_grid_product_zip_and_seed_repeats(tmp_path):
    grid = {"training.kl.beta": [0.5, 1.0, 2.0], "model.latent_dim": [4, 8, 16]}
    product = expand(load_sweep(write_sweep(tmp_path, "p", grid=grid, seeds=[1, 2])))
    assert len(product) == 3 * 3 * 2
    assert product[0].params == {"training.kl.beta": 0.5, "model.latent_dim": 4, "training.seed": 1}
    assert product[-1].overrides == [
        "training.kl.beta=2.0",
        "model.latent_dim=16",
        "training.seed=2",
    ]
    zipped = expand(load_sweep(write_sweep(tmp_path, "z", grid=grid, combine="zip")))
    assert [t.params for t in zipped] == [
        {"training.kl.beta": 0.5, "model.latent_dim": 4},
        {"training.kl.beta": 1.0, "model.latent_dim": 8},
        {"training.kl.beta": 2.0, "model.latent_dim": 16},
    ]


def test_run_ids_are_stable_unique_and_valid(tmp_path):
    grid = {"training.kl.beta": [-1.0, 1.0], "model.hidden_dims": [[32, 16], []]}
    path = write_sweep(tmp_path, grid=grid, overrides={"training.epochs": 1})
    ids = [t.run_id for t in expand(load_sweep(path))]
    assert ids == [t.run_id for t in expand(load_sweep(path))]  # derived, not random
    assert len(set(ids)) == 4
    assert ids[0].startswith("s-beta-1.0_hidden_dims32x16-")
    from src.training.run.rundir import RUN_ID

    assert all(RUN_ID.match(i) for i in ids)
    # The fixed overrides define the trial too: changing them gives new ids.
    changed = write_sweep(tmp_path, grid=grid, overrides={"training.epochs": 2})
    assert not set(ids) & {t.run_id for t in expand(load_sweep(changed))}


def test_random_search_is_seeded_and_in_range(tmp_path):
    params = {
        "training.lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "model.latent_dim": {"low": 2, "high": 6},
        "model.activation": {"choices": ["relu", "gelu"]},
    }
    path = write_sweep(tmp_path, random={"seed": 3, "trials": 20, "params": params})
    a, b = expand(load_sweep(path)), expand(load_sweep(path))
    assert [t.params for t in a] == [t.params for t in b]
    other = write_sweep(tmp_path, "o", random={"seed": 4, "trials": 20, "params": params})
    assert [t.params for t in a] != [t.params for t in expand(load_sweep(other))]
    assert 1 < len(a) <= 20  # duplicates (possible with ints and choices) are run once
    for t in a:
        lr, dim = t.params["training.lr"], t.params["model.latent_dim"]
        assert 1e-4 <= lr <= 1e-2 and isinstance(lr, float)
        assert 2 <= dim <= 6 and isinstance(dim, int)
        assert t.params["model.activation"] in ("relu", "gelu")
    # Log-uniform: about half the samples fall below the geometric midpoint 1e-3.
    below = sum(t.params["training.lr"] < 1e-3 for t in a)
    assert 3 <= below <= len(a) - 3


@pytest.mark.parametrize(
    "value", [0.5, -1.0, 1e-5, 2e20, 3, True, "relu", "1", "yes", [32, 16], [], "a b", [1e-5, 0.5]]
)
def test_override_values_round_trip_through_the_train_parser(value):
    key, parsed = parse_override(f"k={format_value(value)}")
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"gird": {"training.kl.beta": [1.0]}}, "unknown sweep key 'gird'"),
        ({"grid": {"training.kl.bta": [1.0]}}, "did you mean 'training.kl.beta'"),
        ({"grid": {"training.kl.beta": 1.0}}, "grid.training.kl.beta must be a non-empty list"),
        ({"grid": {"training": [1]}}, "'training' is not a config key"),
        ({"overrides": {"training.lrr": 1}, "seeds": [1]}, "'training.lrr' is not a config key"),
        (
            {"grid": {"training.kl.beta": [1.0, 2.0], "model.latent_dim": [4]}, "combine": "zip"},
            "zip needs grid lists of equal length",
        ),
        ({"grid": {"training.kl.beta": [1.0]}, "combine": "cross"}, "combine: 'cross'"),
        (
            {"random": {"seed": 0, "trials": 2, "params": {"model.latent_dim": {"low": 4}}}},
            "expected keys low, high",
        ),
        (
            {
                "random": {
                    "seed": 0,
                    "trials": 2,
                    "params": {"training.lr": {"low": 0, "high": 1, "log": True}},
                }
            },
            "log: true needs low > 0",
        ),
        ({"random": {"seed": 0, "params": {}}}, "random needs exactly the keys"),
        ({"seeds": [1], "grid": {"training.seed": [1]}}, "training.seed is swept by 'seeds'"),
        ({"seeds": [1], "overrides": {"training.seed": 3}}, "both a fixed override and swept"),
        ({"overrides": {"training.epochs": 1}}, "nothing to sweep"),
        ({"seeds": [1], "metric": "elbo"}, "metric: 'elbo' is not one of"),
        ({"seeds": [1], "experiment": "configs/experiment/nope.yaml"}, "experiment file not found"),
        ({"seeds": [1], "name": "a/b"}, "name 'a/b'"),
    ],
)
def test_bad_sweep_files_are_config_errors(tmp_path, fields, message):
    with pytest.raises(ConfigError) as err:
        load_sweep(write_sweep(tmp_path, **fields))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_shipped_sweep_files_load():
    sweeps = sorted((BASELINE.parents[1] / "sweep").glob("*.yaml"))
    assert sweeps
    for path in sweeps:
        assert expand(load_sweep(path))


def test_trial_action_from_the_run_directory(tmp_path):
    run = tmp_path / "r"
    assert runner.trial_action(run) == "new"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"status": "running"}))
    assert runner.trial_action(run) == "restart"  # killed before its first checkpoint
    (run / "config.yaml").write_text("{}")
    (run / "model_last" / "20.orbax-checkpoint-tmp-1").mkdir(parents=True)
    assert runner.trial_action(run) == "restart"  # only a half-written checkpoint
    (run / "model_last" / "20").mkdir()
    assert runner.trial_action(run) == "resume"
    (run / "metrics.json").write_text(json.dumps({"status": "completed"}))
    assert runner.trial_action(run) == "skip"


def test_workers_get_disjoint_devices():
    assert runner.slot_envs(2, ["0", "1", "2", "3"]) == [
        {"CUDA_VISIBLE_DEVICES": "0,2"},
        {"CUDA_VISIBLE_DEVICES": "1,3"},
    ]
    assert runner.slot_envs(3, []) == [{}, {}, {}]
    with pytest.raises(UserError, match="--workers=3 exceeds the 2 GPUs"):
        runner.slot_envs(3, ["0", "1"])
    assert runner.visible_gpus("none") == [] and runner.visible_gpus("2, 5") == ["2", "5"]


def test_bad_sweep_file_exits_2_with_one_line(tmp_path):
    path = write_sweep(tmp_path, grid={"training.kl.bta": [1.0]})
    result = run_script("sweep.py", f"--config={path}", f"--workdir={tmp_path}", timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "training.kl.bta" in lines[0], result.stderr
    shipped = BASELINE.parents[1] / "sweep" / "beta.yaml"
    zero = run_script("sweep.py", f"--config={shipped}", "--workers=0", f"--workdir={tmp_path}")
    assert zero.returncode == 2 and "argument --workers: expected a positive integer" in zero.stderr
    assert not (tmp_path / "sweeps").exists()


# --- Running sweeps (real training, tiny settings).


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_two_worker_grid_sweep_is_complete_and_resumable(tmp_path):
    sweep = write_sweep(
        tmp_path, "beta2", overrides=SWEEP_OVERRIDES, grid={"training.kl.beta": [0.5, 2.0]}
    )
    work = tmp_path / "work"
    args = (f"--config={sweep}", f"--workdir={work}", "--workers=2", "--devices=none")
    result = run_script("sweep.py", *args)
    assert result.returncode == 0, result.stdout + result.stderr

    trials = expand(load_sweep(sweep))
    folder = work / "sweeps" / "beta2"
    rows = read_csv(folder / "summary.csv")
    assert [r["run_id"] for r in rows] == [t.run_id for t in trials]
    for row, trial, beta in zip(rows, trials, (0.5, 2.0), strict=True):
        run_dir = work / "checkpoints" / trial.run_id
        assert {p.name for p in run_dir.iterdir()} >= {
            "config.yaml",
            "metrics.json",
            "provenance.json",
            "model_best",
            "model_last",
        }
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["total_steps"] == 44
        assert load_saved_config(run_dir / "config.yaml").training.kl.beta == beta
        prov = json.loads((run_dir / "provenance.json").read_text())
        assert prov["env"]["SWEEP_NAME"] == "beta2"
        assert row["status"] == "completed" and float(row["training.kl.beta"]) == beta
        assert float(row["best_value"]) == pytest.approx(metrics["best"]["value"], rel=1e-5)
        assert float(row["val_elbo"]) == pytest.approx(metrics["final"]["val"]["elbo"], rel=1e-5)
        assert math.isfinite(float(row["wall_s"])) and float(row["wall_s"]) >= 0
    md = (folder / "summary.md").read_text()
    assert all(t.run_id in md for t in trials)
    assert (folder / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = read_csv(work / "runs.csv")
    assert sorted((r["event"], r["run_id"]) for r in index) == sorted(
        (e, t.run_id) for e in ("start", "end") for t in trials
    )
    assert {r["status"] for r in index if r["event"] == "end"} == {"completed"}

    # Re-running the same sweep starts nothing.
    before = {
        t.run_id: (work / "checkpoints" / t.run_id / "metrics.json").read_text() for t in trials
    }
    again = run_script("sweep.py", *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("(skipped)") == 2
    assert len(read_csv(work / "runs.csv")) == 4
    after = {
        t.run_id: (work / "checkpoints" / t.run_id / "metrics.json").read_text() for t in trials
    }
    assert after == before

    # A trial that stopped before its end is resumed from its checkpoint, not restarted.
    stopped = work / "checkpoints" / trials[1].run_id / "metrics.json"
    record = json.loads(stopped.read_text())
    stopped.write_text(json.dumps({**record, "status": "interrupted"}))
    resumed = run_script("sweep.py", *args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{trials[1].run_id}: completed (resumed" in resumed.stdout
    assert f"{trials[0].run_id}: completed (skipped)" in resumed.stdout
    log = (folder / "logs" / f"{trials[1].run_id}.log").read_text()
    assert "--resume" in [ln for ln in log.splitlines() if ln.startswith("$ ")][-1]
    assert json.loads(stopped.read_text())["history"] == record["history"]


def test_a_failing_trial_is_reported_and_the_others_finish(tmp_path):
    sweep = write_sweep(
        tmp_path, "bad", overrides=SWEEP_OVERRIDES, grid={"training.kl.beta": [-1.0, 0.5]}
    )
    work = tmp_path / "work"
    result = run_script("sweep.py", f"--config={sweep}", f"--workdir={work}", "--workers=1")
    assert result.returncode == 1, result.stdout + result.stderr
    bad, good = expand(load_sweep(sweep))
    assert f"{bad.run_id}: failed" in result.stdout
    assert "training.kl.beta must be >= 0" in result.stdout
    rows = {r["run_id"]: r for r in read_csv(work / "sweeps" / "bad" / "summary.csv")}
    assert rows[bad.run_id]["status"] == "failed"
    assert "training.kl.beta must be >= 0" in rows[bad.run_id]["error"]
    assert rows[good.run_id]["status"] == "completed" and rows[good.run_id]["val_elbo"]
    assert "## Problems" in (work / "sweeps" / "bad" / "summary.md").read_text()


def test_train_commands_for_each_action(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, grid={"training.kl.beta": [0.5]}))
    (trial,) = expand(spec)
    new = runner.train_command(spec, trial, tmp_path, "new")
    assert new[2:] == [
        f"--workdir={tmp_path}",
        f"--run_id={trial.run_id}",
        f"--config={BASELINE}",
        "--config.training.kl.beta=0.5",
    ]
    assert "--overwrite" in runner.train_command(spec, trial, tmp_path, "restart")
    resume = runner.train_command(spec, trial, tmp_path, "resume")
    assert resume[-1] == "--resume" and not any(a.startswith("--config") for a in resume)


def test_completed_trial_with_a_different_config_is_stale(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, grid={"training.kl.beta": [0.5]}))
    (trial,) = expand(spec)
    run_dir = tmp_path / "checkpoints" / trial.run_id
    run_dir.mkdir(parents=True)
    expected = runner.expected_hash(spec, trial)
    for recorded, status in ((expected, "completed"), ("0123456789ab", "stale")):
        (run_dir / "metrics.json").write_text(
            json.dumps({"status": "completed", "config_hash": recorded})
        )
        outcome = runner.run_trial(spec, trial, tmp_path, tmp_path / "logs", {})
        assert (outcome.action, outcome.status) == ("skipped", status)
    assert "base experiment changed" in outcome.error
    assert not (tmp_path / "logs").exists()  # nothing was launched


def test_summary_table_and_plot_from_rows(tmp_path):
    from src.experiments import summary

    grid = {"model.hidden_dims": [[32], [64, 32]]}
    spec = load_sweep(write_sweep(tmp_path, grid=grid, seeds=[1, 2]))
    trials = expand(spec)
    rows = [
        summary.trial_row(
            spec, t, runner.Outcome(t.run_id, "new", "completed", "", 1.0), tmp_path, []
        )
        for t in trials
    ]
    for i, row in enumerate(rows):
        row["val_elbo"] = -30.0 + i
    rows[-1]["status"], rows[-1]["error"] = "failed", "exit 1: boom"
    summary.write_summary(spec, rows, tmp_path / "out")
    table = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["model.hidden_dims"] for r in table] == ["[32]", "[32]", "[64, 32]", "[64, 32]"]
    assert [r["training.seed"] for r in table] == ["1", "2", "1", "2"]
    md = (tmp_path / "out" / "summary.md").read_text()
    assert f"Best by val_elbo: `{trials[2].run_id}` (-28)" in md and "exit 1: boom" in md
    assert summary.plot(spec, rows, tmp_path / "out" / "summary.png")
    assert (tmp_path / "out" / "summary.png").stat().st_size > 1000
    assert not summary.plot(spec, [{**r, "status": "failed"} for r in rows], tmp_path / "x.png")
