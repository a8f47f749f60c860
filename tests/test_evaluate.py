"""scripts/evaluate.py end to end: restore across device counts, reproduce the logged validation
ELBO, the eval record and figures, NLL(k) in k, and user errors that must write nothing."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from src.evaluation.entry import main
from src.evaluation.evaluate import derive_eval_keys, evaluate_run
from src.training.device.parallel import make_mesh, replicated, split_on_devices
from src.utils.cli import run
from tests.helpers import BASELINE, TINY, run_script, train

EVAL_KEYS = {
    "elbo",
    "recon",
    "kl",
    "iwae_nll",
    "iwae_samples",
    "kl_per_dim",
    "active_units",
    "mutual_info",
    "bits_per_dim",
    "checkpoint",
    "step",
    "split",
    "num_examples",
}
SMALL_EVAL = ["--config.eval.iwae_samples=64", "--config.eval.iwae_chunk=16"]


@pytest.fixture(scope="module")
def run4(tmp_path_factory) -> Path:
    """A tiny run trained on 4 simulated CPU devices (its own process: the flag is read at start)."""
    workdir = tmp_path_factory.mktemp("work")
    result = run_script(
        "train.py",
        f"--config={BASELINE}",
        f"--workdir={workdir}",
        "--run_id=four",
        *[f"--config.{o}" for o in TINY],
        "--config.parallel.num_devices=4",
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    assert result.returncode == 0, result.stderr
    run_dir = workdir / "checkpoints" / "four"
    assert json.loads((run_dir / "provenance.json").read_text())["devices"]["count"] == 4
    return run_dir


def test_cli_restores_a_4_device_run_on_1_device_and_reproduces_val_elbo(run4):
    result = run_script(
        "evaluate.py", f"--run_dir={run4}", "--split=val", *SMALL_EVAL, env={"XLA_FLAGS": ""}
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((run4 / "eval" / "best_val.json").read_text())
    assert set(record) >= EVAL_KEYS
    metrics = json.loads((run4 / "metrics.json").read_text())
    best = metrics["best"]
    assert record["checkpoint"] == "best" and record["split"] == "val"
    assert record["step"] == best["step"]
    assert record["elbo"] == pytest.approx(best["value"], rel=1e-5)
    logged = next(
        r for r in metrics["history"] if r["split"] == "val" and r["step"] == best["step"]
    )
    assert record["kl"] == pytest.approx(logged["kl"], rel=1e-5)
    assert record["active_units"] == logged["active_units"]
    np.testing.assert_allclose(record["kl_per_dim"], logged["kl_per_dim"], rtol=1e-5)
    # Internal consistency of the record.
    assert record["num_examples"] == 180 and record["iwae_samples"] == 64
    assert record["kl"] == pytest.approx(sum(record["kl_per_dim"]))
    assert record["bits_per_dim"] == pytest.approx(record["iwae_nll"] / (64 * math.log(2)))
    assert 0.0 <= record["mutual_info"] <= math.log(180)
    assert record["iwae_nll"] < -record["elbo"]  # k = 64 is tighter than k = 1 here
    figures = run4.parent.parent / "figures" / "four"
    names = {p.name for p in figures.glob("*.png")}
    expected = {f"best_val_{n}.png" for n in ("reconstructions", "prior_samples", "traversals")}
    assert expected | {"best_val_kl_per_dim.png", "curves.png"} <= names
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in figures.glob("*.png"))


def test_nll_does_not_increase_with_k(run4):
    import jax

    from src.data.pipeline import load_splits
    from src.evaluation import evaluate as ev

    record, written = evaluate_run(
        run4, "last", "test", ["eval.iwae_samples=10", "eval.figures=false"]
    )
    assert written == [run4 / "eval" / "last_test.json"]
    cfg = ev.load_run_config(run4, [])
    splits = load_splits(cfg.data)
    graphdef, abstract = ev.abstract_train_state(cfg, splits.train.shape[1:], 1)
    mesh = make_mesh(jax.devices()[:1])
    state, _ = ev.restore_state(run4, "last", abstract, replicated(mesh))
    keys = derive_eval_keys(cfg.training.seed)
    nll = {}
    for k in (1, 10, 100):
        step = ev.make_posterior_step(mesh=mesh, graphdef=graphdef, iwae_samples=k, iwae_chunk=50)
        post = ev.posterior_pass(
            step, state.params, splits.test, cfg.eval.batch_size, keys, split_on_devices(mesh)
        )
        nll[k] = -post["log_px"].astype(np.float64)
    # Same keys and program as evaluate_run: the record is repeatable.
    assert record["iwae_nll"] == pytest.approx(nll[10].mean(), rel=1e-6)
    for small, large in ((1, 10), (10, 100)):
        diff = nll[large] - nll[small]
        assert diff.mean() <= 3 * diff.std() / math.sqrt(len(diff)), (small, large)
    assert nll[100].mean() < nll[1].mean()


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _copy_run(run4: Path, tmp_path: Path) -> Path:
    target = tmp_path / "checkpoints" / "copy"
    shutil.copytree(run4, target, ignore=shutil.ignore_patterns("eval"))
    return target


def _edit_config(run_dir: Path, section: str, key: str, value) -> None:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg[section][key] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.mark.parametrize(
    "case, args, message",
    [
        ("missing_dir", ["--run_dir={tmp}/checkpoints/nope"], "no such directory"),
        ("not_a_run", ["--run_dir={tmp}"], "not a run directory (no config.yaml)"),
        ("no_best", ["--run_dir={run}"], "--checkpoint=best: no folder"),
        ("empty_best", ["--run_dir={run}"], "--checkpoint=best: no complete checkpoint"),
        (
            "latent_dim",
            ["--run_dir={run}"],
            "params/decoder/net/layers/0/kernel is float32[4, 32] in the checkpoint but float32[3, 32]",
        ),
        ("hidden_dims", ["--run_dir={run}"], "float32[1088] in the checkpoint but float32[32]"),
        ("optimizer", ["--run_dir={run}"], "has no opt_state/0/0/trace/"),
        ("override", ["--run_dir={run}", "--config.model.latent_dim=3"], "only eval.*"),
        ("bad_eval", ["--run_dir={run}", "--config.eval.iwae_samples=0"], "must be > 0"),
        ("bad_split", ["--run_dir={run}", "--split=dev"], "invalid choice: 'dev'"),
    ],
)
def test_user_errors_exit_2_and_write_nothing(run4, tmp_path, capsys, case, args, message):
    run_dir = _copy_run(run4, tmp_path)
    if case == "no_best":
        shutil.rmtree(run_dir / "model_best")
    elif case == "empty_best":
        shutil.rmtree(run_dir / "model_best")
        (run_dir / "model_best").mkdir()
    elif case == "latent_dim":
        _edit_config(run_dir, "model", "latent_dim", 3)
    elif case == "hidden_dims":
        _edit_config(run_dir, "model", "hidden_dims", [32, 32])
    elif case == "optimizer":
        _edit_config(run_dir, "optimizer", "type", "sgd")
    before = _hashes(tmp_path)
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in args]
    assert run(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert _hashes(tmp_path) == before
    assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize(
    "likelihood",
    [
        ["model.likelihood=gaussian", "model.gaussian.scale=shared"],
        ["model.likelihood=categorical"],
    ],
)
def test_every_likelihood_evaluates_and_reproduces_val_elbo(tmp_path, likelihood):
    """IWAE and figures read log p(x|z) and E[x|z] from the model's own likelihood module."""
    metrics, paths = train(tmp_path, "lik", [*TINY, "training.epochs=1", *likelihood])
    record, written = evaluate_run(paths.run_dir, "best", "val", ["eval.iwae_samples=20"])
    assert record["elbo"] == pytest.approx(metrics["best"]["value"], rel=1e-5)
    assert math.isfinite(record["iwae_nll"]) and record["iwae_nll"] <= -record["elbo"] + 1.0
    assert any(p.suffix == ".png" for p in written)
