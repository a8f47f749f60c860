"""Data sources: IDX (MNIST-style) files, npz arrays, synthetic generators, splits, binarization."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from src.data import synthetic
from src.data.catalog import IDX_DATASETS
from src.data.idx import encode_idx, parse_idx, read_idx
from src.data.pipeline import load_splits, split_indices
from src.utils.config import load_config
from src.utils.errors import ConfigError, DataError
from tests.helpers import BASELINE, REPO, run_script, write_idx_dataset

MNIST = REPO / "configs" / "experiment" / "mnist.yaml"


def data_cfg(data: str, *overrides: str):
    return load_config(BASELINE, {"data": data}, overrides).data


# --- IDX format ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_idx_round_trip(tmp_path: Path, dtype):
    x = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = encode_idx(x)
    code = data[2]
    np.testing.assert_array_equal(parse_idx(data, 3, code, "x"), x)


def test_idx_header_is_the_published_layout():
    data = encode_idx(np.zeros((2, 28, 28), np.uint8))
    assert data[:4] == bytes.fromhex("00000803")  # MNIST images magic number
    assert data[4:16] == bytes.fromhex("00000002 0000001c 0000001c")
    assert len(data) == 16 + 2 * 28 * 28


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loads_raw_and_gzipped_files_with_own_test_split(tmp_path: Path, gz: bool):
    arrays = write_idx_dataset(tmp_path, n_train=50, n_test=20, gz=gz)
    cfg = data_cfg(
        "mnist", f"data.dir={tmp_path}", "data.verify_checksum=false", "data.binarize=none"
    )
    splits = load_splits(cfg)
    assert splits.train.shape == (45, 28, 28, 1) and splits.val.shape == (5, 28, 28, 1)
    # The test split is the t10k files, untouched and in order.
    np.testing.assert_array_equal(splits.test[..., 0], arrays["test_images"] / np.float32(255))
    # Validation is held out from the training files, deterministically from split_seed.
    keep, val, _ = split_indices(50, 0, 0.1, 0.0)
    np.testing.assert_array_equal(splits.val[..., 0], arrays["train_images"][val] / np.float32(255))
    np.testing.assert_array_equal(
        splits.train[..., 0], arrays["train_images"][keep] / np.float32(255)
    )
    assert splits.info["num_examples"] == {"train": 45, "val": 5, "test": 20}
    assert splits.info["held_out_from_train"] == ["val"]
    suffix = ".gz" if gz else ""
    assert set(splits.info["files"]) == {
        f"{n}{suffix}"
        for n in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    }
    json.dumps(splits.info)  # provenance-safe


def test_split_seed_changes_the_validation_images(tmp_path: Path):
    write_idx_dataset(tmp_path, n_train=50, n_test=10, gz=True)
    base = ("data.dir=" + str(tmp_path), "data.verify_checksum=false")
    a = load_splits(data_cfg("mnist", *base))
    b = load_splits(data_cfg("mnist", *base))
    c = load_splits(data_cfg("mnist", *base, "data.split_seed=1"))
    np.testing.assert_array_equal(a.val, b.val)
    assert not np.array_equal(a.val, c.val)


def test_published_checksum_is_enforced(tmp_path: Path):
    write_idx_dataset(tmp_path, n_train=10, n_test=5, gz=True)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: SHA-256 .* differs from"):
        load_splits(data_cfg("mnist", f"data.dir={tmp_path}"))
    assert IDX_DATASETS["mnist"].sha256["train-images-idx3-ubyte.gz"].startswith("440fcabf")


def corrupt(directory: Path, name: str, edit) -> None:
    path = directory / name
    path.write_bytes(edit(path.read_bytes()))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: b"\x00\x00\x08\x01" + d[4:],
            "wrong magic number 0x00000801; expected 0x00000803",
        ),
        (lambda d: b"PK\x03\x04" + d[4:], "wrong magic number 0x504b0304"),
        (
            lambda d: d[:-7],
            "truncated: header declares 10x28x28 (7840 bytes of data), file holds 7833",
        ),
        (lambda d: d[:10], "truncated header (10 of 16 bytes)"),
        (lambda d: d + b"\x00\x00", "2 unexpected bytes after the 10x28x28 array"),
        (lambda d: b"", "truncated: 0 bytes"),
    ],
)
def test_malformed_idx_files_name_file_and_problem(tmp_path: Path, edit, message):
    write_idx_dataset(tmp_path, n_train=10, n_test=5, gz=False)
    corrupt(tmp_path, "train-images-idx3-ubyte", edit)
    with pytest.raises(DataError) as err:
        load_splits(data_cfg("mnist", f"data.dir={tmp_path}", "data.verify_checksum=false"))
    assert message in str(err.value) and "train-images-idx3-ubyte" in str(err.value)
    assert "\n" not in str(err.value)


def test_dynamic_binarization_scores_one_fixed_binarization_of_val_and_test(tmp_path: Path):
    """Training images stay grey (re-binarized every step); val and test are binarized once,
    from data.eval_binarize_seed, the same at every load, and recorded in the split info."""
    arrays = write_idx_dataset(tmp_path, n_train=200, n_test=100, gz=False)
    base = ("data.verify_checksum=false", f"data.dir={tmp_path}")
    first, again = (load_splits(data_cfg("mnist", *base)) for _ in range(2))
    other = load_splits(data_cfg("mnist", *base, "data.eval_binarize_seed=1"))
    grey = arrays["test_images"] / np.float32(255)
    np.testing.assert_array_equal(first.test, again.test)
    np.testing.assert_array_equal(first.val, again.val)
    assert set(np.unique(first.test)) == {0.0, 1.0} and set(np.unique(first.val)) == {0.0, 1.0}
    assert not np.array_equal(first.test, other.test)
    # Each pixel is a Bernoulli(intensity) draw: the binary mean follows the grey mean.
    assert abs(first.test.mean() - grey.mean()) < 0.01
    assert len(np.unique(first.train)) > 2
    assert first.info["eval_binarize_seed"] == 0 and other.info["eval_binarize_seed"] == 1


@pytest.mark.parametrize("gz", [False, True])
def test_idx_file_with_another_checksum_is_refused(tmp_path: Path, gz: bool):
    """Raw files are pinned like gzipped ones: a valid IDX file that is not the published one
    is refused, naming the file and both digests."""
    write_idx_dataset(tmp_path, n_train=10, n_test=5, gz=gz)
    with pytest.raises(DataError) as err:
        load_splits(data_cfg("mnist", f"data.dir={tmp_path}"))
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    assert f"{tmp_path / name}: SHA-256" in str(err.value) and "published" in str(err.value)


def test_truncated_gzip_is_a_data_error(tmp_path: Path):
    write_idx_dataset(tmp_path, n_train=10, n_test=5, gz=True)
    corrupt(tmp_path, "t10k-images-idx3-ubyte.gz", lambda d: d[: len(d) // 2])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: cannot read"):
        load_splits(data_cfg("mnist", f"data.dir={tmp_path}", "data.verify_checksum=false"))


def test_mismatched_image_and_label_counts(tmp_path: Path):
    write_idx_dataset(tmp_path, n_train=10, n_test=5, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(encode_idx(np.zeros(9, np.uint8)))
    with pytest.raises(DataError, match="has 10 images but .*train-labels-idx1-ubyte has 9 labels"):
        load_splits(data_cfg("mnist", f"data.dir={tmp_path}", "data.verify_checksum=false"))


def test_missing_folder_and_file_name_the_download_command(tmp_path: Path):
    with pytest.raises(DataError, match=r"folder .*nope does not exist.*download_data.py"):
        load_splits(data_cfg("fashion_mnist", f"data.dir={tmp_path / 'nope'}"))
    write_idx_dataset(tmp_path, n_train=10, n_test=5, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_splits(data_cfg("mnist", f"data.dir={tmp_path}", "data.verify_checksum=false"))
    assert "no t10k-labels-idx1-ubyte[.gz]" in str(err.value)
    assert f"download_data.py --dataset=mnist --dir={tmp_path}" in str(err.value)


def test_read_idx_checks_the_number_of_dimensions(tmp_path: Path):
    path = tmp_path / "labels"
    path.write_bytes(encode_idx(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="expected 0x00000803"):
        read_idx(path, ndim=3)


# --- npz -----------------------------------------------------------------------------------


def npz_cfg(path: Path, *overrides: str):
    return data_cfg("npz", f"data.npz.path={path}", *overrides)


def test_npz_single_array_is_split_by_seed_and_rescaled(tmp_path: Path):
    x = np.random.default_rng(0).integers(0, 256, (40, 5, 6), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", train=x)
    splits = load_splits(npz_cfg(tmp_path / "a.npz", "data.npz.value_range=[0, 255]"))
    keep, val, test = split_indices(40, 0, 0.1, 0.1)
    np.testing.assert_allclose(splits.val[..., 0], x[val] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(splits.train[..., 0], x[keep] / 255.0, rtol=1e-6)
    assert splits.test.shape == (4, 5, 6, 1) and splits.info["sha256"]


def test_npz_with_its_own_splits_and_any_shape(tmp_path: Path):
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {
        "tr": rng.uniform(size=(30, 4, 4, 3)),
        "va": rng.uniform(size=(7, 4, 4, 3)),
        "te": rng.uniform(size=(9, 4, 4, 3)),
    }
    np.savez(tmp_path / "b.npz", **arrays)
    keys = ("data.npz.train_key=tr", "data.npz.val_key=va", "data.npz.test_key=te")
    splits = load_splits(npz_cfg(tmp_path / "b.npz", *keys))
    np.testing.assert_allclose(splits.val, arrays["va"].astype(np.float32))
    np.testing.assert_allclose(splits.test, arrays["te"].astype(np.float32))
    assert splits.train.shape == (30, 4, 4, 3) and splits.info["held_out_from_train"] == []
    vectors: dict[str, Any] = {"train": rng.uniform(size=(20, 12))}
    np.savez(tmp_path / "v.npz", **vectors)
    assert load_splits(npz_cfg(tmp_path / "v.npz")).train.shape[1:] == (12, 1, 1)


@pytest.mark.parametrize(
    "arrays, overrides, message",
    [
        ({"train": np.full((5, 3, 3), np.nan)}, (), "a.npz[train]: 45 NaN or infinite values"),
        (
            {"train": np.full((5, 3, 3), 2.0)},
            (),
            "values span [2, 2], outside data.npz.value_range [0, 1]",
        ),
        ({"train": -np.ones((5, 3, 3))}, (), "values span [-1, -1]"),
        (
            {"x": np.zeros((5, 3, 3))},
            (),
            "no array 'train' (data.npz.train_key); arrays in the file: x",
        ),
        (
            {"train": np.zeros((5, 3, 3))},
            ("data.npz.val_key=v",),
            "no array 'v' (data.npz.val_key)",
        ),
        ({"train": np.zeros(5)}, (), "expected [N, D], [N, H, W] or [N, H, W, C], got shape (5,)"),
        ({"train": np.array(["a", "b"])}, (), "expected real numbers, got dtype <U1"),
        ({"train": np.zeros((0, 3, 3))}, (), "a.npz[train]: the array is empty"),
        (
            {"train": np.zeros((5, 3, 3)), "t": np.zeros((5, 4, 4))},
            ("data.npz.test_key=t",),
            "'t' has images of shape (4, 4, 1), 'train' (3, 3, 1)",
        ),
    ],
)
def test_bad_npz_arrays_name_file_key_and_problem(tmp_path: Path, arrays, overrides, message):
    np.savez(tmp_path / "a.npz", **arrays)
    with pytest.raises(DataError) as err:
        load_splits(npz_cfg(tmp_path / "a.npz", *overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unreadable_or_missing_npz(tmp_path: Path):
    with pytest.raises(DataError, match="data.npz.path: no file"):
        load_splits(npz_cfg(tmp_path / "none.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match="bad.npz: cannot read as .npz"):
        load_splits(npz_cfg(tmp_path / "bad.npz"))
    np.savez(tmp_path / "obj.npz", train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="obj.npz: cannot read as .npz"):
        load_splits(npz_cfg(tmp_path / "obj.npz"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.npz.value_range=[1, 0]", "data.npz.value_range must be [low, high] with low < high"),
        ("data.synthetic.spectrum=[1, 2]", "data.synthetic.spectrum must be [] or 4 positive"),
        ("data.synthetic.shape=[8, 8]", "data.synthetic.shape must be [H, W, C]"),
        ("data.synthetic.latent_dim=65", "latent_dim (65) exceeds the observation dimension 64"),
        ("data.on_device=sometimes", "data.on_device: 'sometimes' is not one of auto, true, false"),
        ("data.synthetic.kind=linear", "kind=linear gives real-valued (PPCA) data"),
    ],
)
def test_bad_data_config_values(override: str, message: str):
    with pytest.raises(ConfigError) as err:
        data_cfg("synthetic", override)
    assert message in str(err.value)


def test_on_device_accepts_yaml_bools():
    assert data_cfg("digits", "data.on_device=true").on_device == "true"
    assert data_cfg("digits", "data.on_device=false").on_device == "false"
    assert data_cfg("digits").on_device == "auto"


# --- synthetic -----------------------------------------------------------------------------


def synthetic_cfg(*overrides: str, kind: str = "manifold"):
    """The synthetic data section; kind=linear is set after validation, which refuses it with
    the only likelihood so far (Bernoulli)."""
    data = load_config(BASELINE, {"data": "synthetic"}, overrides).data.as_configdict()
    data.synthetic.kind = kind
    return data


def test_linear_generator_has_the_requested_spectrum_and_covariance():
    rng = np.random.default_rng(3)
    spectrum = [3.0, 2.0, 0.5]
    x, info = synthetic.linear(rng, 40_000, 10, spectrum, offset=1.5, noise_std=0.1)
    w = np.asarray(info["W"])
    np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False), spectrum, rtol=1e-12)
    assert np.linalg.matrix_rank(w) == 3 and info["latent_dim"] == 3
    # Sample moments against the PPCA closed form: mean mu, covariance W W^T + sigma^2 I.
    np.testing.assert_allclose(x.mean(0), 1.5, atol=0.05)
    expected = w @ w.T + 0.01 * np.eye(10)
    np.testing.assert_allclose(np.cov(x.T), expected, atol=0.1)
    eig = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]
    np.testing.assert_allclose(eig[:3], np.square(spectrum) + 0.01, rtol=0.05)
    np.testing.assert_allclose(eig[3:], 0.01, rtol=0.1)  # noise floor: rank k plus sigma^2


def test_manifold_generator_has_intrinsic_dimension_k():
    rng = np.random.default_rng(0)
    x, info = synthetic.manifold(rng, 100, 30, latent_dim=3, lengthscale=1.0, noise_std=0.0)
    assert x.min() >= 0.0 and x.max() <= 1.0
    omega, phi = np.asarray(info["Omega"]), np.asarray(info["phi"])
    z = np.random.default_rng(1).standard_normal((1, 3))
    np.testing.assert_allclose(
        synthetic.manifold_mean(z, omega, phi)[0], 0.5 + 0.5 * np.cos(omega @ z[0] + phi)
    )
    # Central-difference Jacobian of the embedding: rank exactly k.
    h = 1e-5
    jac = np.stack(
        [
            (
                synthetic.manifold_mean(z + h * e, omega, phi)
                - synthetic.manifold_mean(z - h * e, omega, phi)
            )[0]
            / (2 * h)
            for e in np.eye(3)
        ],
        axis=1,
    )
    s = np.linalg.svd(jac, compute_uv=False)
    assert s.shape == (3,) and s.min() > 1e-2  # k independent directions
    assert np.linalg.matrix_rank(np.hstack([jac, jac @ np.ones((3, 1))]), tol=1e-6) == 3


@pytest.mark.parametrize("kind", ["linear", "manifold"])
def test_synthetic_data_is_deterministic_from_its_seed(kind: str):
    cfg = synthetic_cfg(kind=kind)
    a, b = synthetic.generate(cfg.synthetic), synthetic.generate(cfg.synthetic)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1] and a[0].shape == (5000, 8, 8, 1) and a[0].dtype == np.float32
    other = synthetic_cfg("data.synthetic.seed=1", kind=kind).synthetic
    assert not np.array_equal(a[0], synthetic.generate(other)[0])


def test_generator_parameters_do_not_depend_on_num_examples():
    small = synthetic_cfg("data.synthetic.num_examples=10").synthetic
    assert synthetic.generate(small)[1] == synthetic.generate(synthetic_cfg().synthetic)[1]


def test_synthetic_splits_record_the_truth():
    splits = load_splits(
        synthetic_cfg("data.synthetic.latent_dim=2", "data.synthetic.noise_std=0.1")
    )
    gen = splits.info["generator"]
    assert gen["kind"] == "manifold" and gen["latent_dim"] == 2 and gen["noise_std"] == 0.1
    assert np.asarray(gen["Omega"]).shape == (64, 2)
    assert splits.info["num_examples"] == {"train": 4000, "val": 500, "test": 500}


# --- binarization --------------------------------------------------------------------------


def test_static_binarization_thresholds_at_one_half(tmp_path: Path):
    x = np.array([0.0, 0.3, 0.5, 0.51, 1.0] * 8).reshape(8, 5, 1)
    np.savez(tmp_path / "a.npz", train=x)
    splits = load_splits(npz_cfg(tmp_path / "a.npz", "data.binarize=static"))
    for split in splits[:3]:
        assert set(np.unique(split)) <= {0.0, 1.0}
        np.testing.assert_array_equal(split[0, :, 0, 0], [0, 0, 0, 1, 1])


def test_dynamic_binarization_keeps_grey_levels_and_draws_per_step():
    import jax

    from src.data.pipeline import binarize

    cfg = data_cfg("digits", "data.binarize=dynamic")
    grey = load_splits(cfg).train
    assert len(np.unique(grey)) > 2  # the split itself stays grey; draws happen per step
    x = jax.numpy.full((20_000,), 0.3, np.float32)
    a, b = binarize(jax.random.key(0), x), binarize(jax.random.key(1), x)
    assert set(np.unique(a)) == {0.0, 1.0}
    assert abs(float(a.mean()) - 0.3) < 0.02  # E[x_bin] = intensity
    assert not np.array_equal(a, b)


def test_binarizing_real_valued_data_is_an_error():
    with pytest.raises(DataError, match=r"data.binarize=static needs values in \[0, 1\]"):
        load_splits(synthetic_cfg("data.binarize=static", kind="linear"))


# --- configs -------------------------------------------------------------------------------


def test_data_groups_and_mnist_experiment_compose():
    for name in ("digits", "mnist", "fashion_mnist", "npz", "synthetic"):
        assert load_config(BASELINE, {"data": name}).data.name == name
    cfg = load_config(MNIST)
    assert cfg.data.name == "mnist" and cfg.data.dir == "data/mnist"
    assert (cfg.model.hidden_dims, cfg.model.latent_dim) == ((500,), 20)
    assert (cfg.training.batch_size, cfg.training.lr, cfg.optimizer.type) == (128, 1e-3, "adam")


def test_missing_mnist_exits_2_with_the_download_hint(tmp_path: Path):
    result = run_script(
        "train.py",
        f"--config={MNIST}",
        f"--workdir={tmp_path}",
        f"--config.data.dir={tmp_path / 'mnist'}",
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "download_data.py --dataset=mnist" in lines[0], result.stderr


def test_gzip_helper_writes_reproducible_bytes(tmp_path: Path):
    write_idx_dataset(tmp_path / "a", 3, 2, gz=True)
    write_idx_dataset(tmp_path / "b", 3, 2, gz=True)
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()
        assert gzip.decompress(f.read_bytes())[:2] == b"\0\0"


# --- digits ----------------------------------------------------------------------------------


def test_digits_read_from_the_shipped_csv_equal_sklearns_loader():
    """The default data skips importing sklearn.datasets; the pixels must be the same."""
    from sklearn.datasets import load_digits

    from src.data.sources import load_digits_images

    images = load_digits_images(data_cfg("digits")).train
    expected = load_digits().images.astype(np.float32)[..., None] / 16.0
    assert images.dtype == np.float32 and images.shape == (1797, 8, 8, 1)
    np.testing.assert_array_equal(images, expected)
