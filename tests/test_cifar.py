"""CIFAR-10's binary version: the reader on small files written here (archive and extracted),
every bad input a one-line DataError, the pinned checksums."""

from __future__ import annotations

import io
import json
import math
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

from src.data.catalog import CIFAR10_SHA256
from src.data.cifar import ARCHIVE, FOLDER, RECORD_BYTES, TEST_FILE, TRAIN_FILES, parse_records
from src.data.pipeline import load_splits
from src.utils.config import load_config
from src.utils.errors import DataError
from tests.helpers import BASELINE, TINY, run_script

FILES = (*TRAIN_FILES, TEST_FILE)


def encode_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """[N, 32, 32, 3] uint8 + [N] labels -> the official layout: label, then R, G, B planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels[:, None], planes], axis=1).astype(np.uint8).tobytes()


def write_cifar(
    directory: Path, per_file: int, layout: str, seed: int = 0
) -> dict[str, np.ndarray]:
    """Writes the six record files of random images as `archive` (the .tar.gz), `folder`
    (extracted into cifar-10-batches-bin/) or `flat` (the .bin files in directory itself);
    returns the images of each file."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    images = {n: rng.integers(0, 256, (per_file, 32, 32, 3), dtype=np.uint8) for n in FILES}
    data = {
        n: encode_records(x, rng.integers(0, 10, per_file, dtype=np.uint8))
        for n, x in images.items()
    }
    if layout == "archive":
        write_archive(directory / ARCHIVE, {f"{FOLDER}/{n}": b for n, b in data.items()})
    else:
        folder = directory / FOLDER if layout == "folder" else directory
        folder.mkdir(exist_ok=True)
        for name, raw in data.items():
            (folder / name).write_bytes(raw)
    return images


def write_archive(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def cifar_cfg(directory: Path, *overrides: str):
    return load_config(
        BASELINE,
        {"data": "cifar10"},
        [f"data.dir={directory}", "data.verify_checksum=false", *overrides],
    ).data


def test_record_layout_is_channel_major():
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 0, 1] = [10, 20, 30]  # row 0, column 1
    raw = encode_records(image, np.array([7], np.uint8))
    assert len(raw) == RECORD_BYTES == 3073
    assert raw[0] == 7 and raw[1 + 1] == 10 and raw[1 + 1024 + 1] == 20 and raw[1 + 2048 + 1] == 30
    images, labels = parse_records(raw, "x")
    np.testing.assert_array_equal(images, image)
    assert labels.tolist() == [7]


@pytest.mark.parametrize("layout", ["archive", "folder", "flat"])
def test_cifar10_loads_with_its_own_test_split(tmp_path: Path, layout: str):
    images = write_cifar(tmp_path, per_file=6, layout=layout)
    splits = load_splits(cifar_cfg(tmp_path))
    train = np.concatenate([images[n] for n in TRAIN_FILES]) / np.float32(255)
    assert splits.train.shape == (27, 32, 32, 3) and splits.val.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(splits.test, images[TEST_FILE] / np.float32(255))
    np.testing.assert_array_equal(
        np.sort(np.concatenate([splits.train, splits.val]), 0), np.sort(train, 0)
    )
    assert splits.test.dtype == np.float32
    names = {ARCHIVE} if layout == "archive" else set(FILES)
    assert set(splits.info["files"]) == names
    assert not any(f["verified"] for f in splits.info["files"].values())


def test_archive_wins_over_extracted_files(tmp_path: Path):
    from_archive = write_cifar(tmp_path, per_file=2, layout="archive", seed=1)
    write_cifar(tmp_path, per_file=2, layout="flat", seed=2)
    splits = load_splits(cifar_cfg(tmp_path))
    np.testing.assert_array_equal(splits.test, from_archive[TEST_FILE] / np.float32(255))


def test_pinned_checksums_are_enforced(tmp_path: Path):
    assert set(CIFAR10_SHA256) == {ARCHIVE, *FILES}
    assert all(re.fullmatch("[0-9a-f]{64}", h) for h in CIFAR10_SHA256.values())
    write_cifar(tmp_path, per_file=2, layout="archive")
    with pytest.raises(DataError, match="differs from the published c4a38c50"):
        load_splits(cifar_cfg(tmp_path, "data.verify_checksum=true"))
    flat = tmp_path / "flat"
    write_cifar(flat, per_file=2, layout="flat")
    with pytest.raises(DataError, match=r"data_batch_1.bin: SHA-256 \w+ differs"):
        load_splits(cifar_cfg(flat, "data.verify_checksum=true"))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def add_bytes(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0" * 7)


def bad_label(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[RECORD_BYTES] = 10  # the second record's label byte
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "edit, message",
    [
        (truncate, "test_batch.bin: 6046 bytes is not a whole number of 3073-byte records"),
        (add_bytes, "test_batch.bin: 6153 bytes is not a whole number"),
        (lambda p: p.write_bytes(b""), "test_batch.bin: 0 bytes is not a whole number"),
        (bad_label, "test_batch.bin: record 1 has label byte 10, not a class 0..9"),
        (lambda p: p.unlink(), "no cifar-10-binary.tar.gz and no test_batch.bin in"),
    ],
)
def test_bad_record_files_name_file_and_problem(tmp_path: Path, edit, message):
    write_cifar(tmp_path, per_file=2, layout="flat")
    edit(tmp_path / TEST_FILE)
    with pytest.raises(DataError, match=re.escape(message)) as error:
        load_splits(cifar_cfg(tmp_path))
    assert "\n" not in str(error.value)


def test_bad_archives_name_file_and_problem(tmp_path: Path):
    write_cifar(tmp_path, per_file=2, layout="archive")
    archive = tmp_path / ARCHIVE
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz: cannot read as a .tar.gz"):
        load_splits(cifar_cfg(tmp_path))
    write_archive(archive, {f"{FOLDER}/{n}": b"" for n in TRAIN_FILES})
    with pytest.raises(DataError, match=f"no member {FOLDER}/{TEST_FILE}"):
        load_splits(cifar_cfg(tmp_path))
    write_archive(archive, {f"{FOLDER}/{n}": bytes(RECORD_BYTES - 1) for n in FILES})
    with pytest.raises(DataError, match=f"{ARCHIVE}:{FOLDER}/data_batch_1.bin: 3072 bytes"):
        load_splits(cifar_cfg(tmp_path))


def test_missing_folder_names_the_official_archive(tmp_path: Path):
    with pytest.raises(DataError, match=re.escape("cifar-10-binary.tar.gz (or its extracted")):
        load_splits(cifar_cfg(tmp_path / "nowhere"))


def test_train_on_cifar10_exits_2_with_one_line_for_a_truncated_file(tmp_path: Path):
    data = tmp_path / "cifar"
    write_cifar(data, per_file=2, layout="folder")
    truncate(data / FOLDER / "data_batch_3.bin")
    result = run_script(
        "train.py",
        f"--config={BASELINE}",
        "--data=cifar10",
        f"--workdir={tmp_path}",
        f"--config.data.dir={data}",
        "--config.data.verify_checksum=false",
        "--config.model.likelihood=dmol",
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "data_batch_3.bin" in lines[0], result.stderr


@pytest.mark.slow
def test_dmol_trains_on_small_cifar10_files(tmp_path: Path):
    """The C = 3 path end to end: data, the mixture's 10 M decoder channels, training, records."""
    data = tmp_path / "cifar"
    write_cifar(data, per_file=20, layout="archive")
    overrides = [o for o in TINY if not o.startswith("training.batch_size")]
    result = run_script(
        "train.py",
        f"--config={BASELINE}",
        "--data=cifar10",
        f"--workdir={tmp_path}",
        "--run_id=cifar",
        f"--config.data.dir={data}",
        "--config.data.verify_checksum=false",
        "--config.model.likelihood=dmol",
        "--config.model.dmol.mixtures=2",
        "--config.training.batch_size=30",
        *(f"--config.{o}" for o in overrides),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "checkpoints" / "cifar" / "metrics.json").read_text())
    val = metrics["final"]["val"]
    # The images are uniform random bytes: 8 bits per subpixel is the best any model can do on
    # average, so a few steps of training land near it (a pmf cannot go below 0 bits).
    per_subpixel_bits = val["recon"] / (32 * 32 * 3 * math.log(2))
    assert 7 < per_subpixel_bits < 12 and math.isfinite(val["elbo"])
