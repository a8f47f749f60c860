"""Training on the new data sources end to end: provenance records the data, streaming = on device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from src.training.loop import train_and_evaluate
from src.utils.config import load_config
from src.utils.rundir import prepare, run_paths
from tests.helpers import BASELINE, REPO, write_idx_dataset
from tests.test_training import restore_params, strip_timing


def train(workdir: Path, run_id: str, overrides: list[str], experiment=BASELINE, data=None):
    cfg = load_config(experiment, {"data": data}, overrides)
    paths = run_paths(workdir, run_id)
    prepare(paths, resume=False, overwrite=False)
    record = train_and_evaluate(cfg, paths, resume=False)
    return record, json.loads(paths.provenance.read_text()), paths.run_dir


def test_streamed_run_equals_on_device_run(tmp_path, tiny_overrides):
    tiny = [*tiny_overrides, "training.batch_size=64"]  # 22 steps per epoch, 2 epochs
    a, prov_a, dir_a = train(tmp_path, "dev", [*tiny, "data.on_device=true"])
    b, prov_b, dir_b = train(tmp_path, "stream", [*tiny, "data.on_device=false"])
    assert prov_a["data"]["on_device"] is True and prov_b["data"]["on_device"] is False
    assert strip_timing(a["history"]) == strip_timing(b["history"])
    pa, pb = restore_params(dir_a / "model_last"), restore_params(dir_b / "model_last")
    for x, y in zip(_leaves(pa), _leaves(pb), strict=True):
        np.testing.assert_array_equal(x, y)


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_mnist_experiment_runs_on_idx_files(tmp_path, tiny_overrides):
    write_idx_dataset(tmp_path / "mnist", n_train=200, n_test=40, gz=True)
    overrides = [
        *tiny_overrides,
        "training.epochs=1",
        f"data.dir={tmp_path / 'mnist'}",
        "data.verify_checksum=false",
    ]
    record, prov, _ = train(tmp_path, "m", overrides, REPO / "configs/experiment/mnist.yaml")
    assert record["status"] == "completed"
    data = prov["data"]
    assert data["name"] == "mnist" and data["image_shape"] == [28, 28, 1]
    assert data["num_examples"] == {"train": 180, "val": 20, "test": 40}
    assert len(data["files"]) == 4 and not any(f["verified"] for f in data["files"].values())
    val = [r for r in record["history"] if r["split"] == "val"]
    assert val[-1]["num_examples"] == 20


def test_synthetic_truth_is_in_provenance(tmp_path, tiny_overrides):
    overrides = [
        *tiny_overrides,
        "training.epochs=1",
        "data.synthetic.num_examples=400",
        "data.synthetic.latent_dim=3",
    ]
    _, prov, _ = train(tmp_path, "s", overrides, data="synthetic")
    gen = prov["data"]["generator"]
    assert gen["kind"] == "manifold" and gen["latent_dim"] == 3 and gen["seed"] == 0
    assert np.asarray(gen["Omega"]).shape == (64, 3) and gen["noise_std"] == 0.05
