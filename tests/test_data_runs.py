"""Training on the new data sources end to end: provenance records the data, streaming = on device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tests.helpers import (
    BASELINE,
    REPO,
    assert_same_arrays,
    read_state,
    train,
    without_timings,
    write_idx_dataset,
)


def train_with_provenance(
    workdir: Path, run_id: str, overrides: list[str], experiment=BASELINE, data=None
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(metrics.json, provenance.json, RunPaths) of a run trained in process."""
    record, paths = train(workdir, run_id, overrides, experiment, data)
    return record, json.loads(paths.provenance.read_text()), paths


def test_streamed_run_equals_on_device_run(tmp_path, tiny_overrides):
    tiny = [*tiny_overrides, "training.batch_size=64"]  # 22 steps per epoch, 2 epochs
    a, prov_a, paths_a = train_with_provenance(tmp_path, "dev", [*tiny, "data.on_device=true"])
    b, prov_b, paths_b = train_with_provenance(tmp_path, "stream", [*tiny, "data.on_device=false"])
    assert prov_a["data"]["on_device"] is True and prov_b["data"]["on_device"] is False
    assert without_timings(a["history"]) == without_timings(b["history"])
    assert_same_arrays(read_state(paths_a.last)[1], read_state(paths_b.last)[1])


def test_mnist_experiment_runs_on_idx_files(tmp_path, tiny_overrides):
    write_idx_dataset(tmp_path / "mnist", n_train=200, n_test=40, gz=True)
    overrides = [
        *tiny_overrides,
        "training.epochs=1",
        f"data.dir={tmp_path / 'mnist'}",
        "data.verify_checksum=false",
    ]
    mnist = REPO / "configs/experiment/mnist.yaml"
    record, prov, _ = train_with_provenance(tmp_path, "m", overrides, mnist)
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
    _, prov, _ = train_with_provenance(tmp_path, "s", overrides, data="synthetic")
    gen = prov["data"]["generator"]
    assert gen["kind"] == "manifold" and gen["latent_dim"] == 3 and gen["seed"] == 0
    assert np.asarray(gen["Omega"]).shape == (64, 3) and gen["noise_std"] == 0.05
