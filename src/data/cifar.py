"""CIFAR-10 from its official binary version (Krizhevsky 2009), validated and checksummed.

`cifar-10-binary.tar.gz` holds `cifar-10-batches-bin/data_batch_1.bin` .. `data_batch_5.bin`
(training) and `test_batch.bin`, each 10,000 records of 3,073 bytes: one label byte (0..9),
then 3,072 pixel bytes, the 32x32 red, green and blue planes in turn, each row-major. The
archive is read in memory (no extraction); the extracted files are read as well. The pickled
"python version" is never read: unpickling a file runs code from it.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from src.data.catalog import CIFAR10_SHA256
from src.data.idx import sha256_file
from src.utils.errors import DataError

SIDE, CHANNELS, CLASSES = 32, 3, 10
RECORD_BYTES = 1 + CHANNELS * SIDE * SIDE
ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"  # the archive's folder
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def get_hint(directory: Path) -> str:
    return f"put {URL} (or its extracted {FOLDER}/*.bin) into {directory} (docs/datasets.md)"


def parse_records(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Records of one binary file -> (images uint8 [N, 32, 32, 3], labels uint8 [N]).

    Raises DataError naming `source` when the length is not a whole number of records or a
    label byte is not a class 0..9 (a truncated file, or another format, e.g. CIFAR-100's
    two label bytes per record).
    """
    if not data or len(data) % RECORD_BYTES:
        raise DataError(
            f"{source}: {len(data)} bytes is not a whole number of {RECORD_BYTES}-byte records "
            "(1 label byte + 3,072 pixel bytes): truncated, or not CIFAR-10's binary version"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels >= CLASSES)
    if bad.size:
        raise DataError(
            f"{source}: record {bad[0]} has label byte {labels[bad[0]]}, not a class 0..9: "
            "not CIFAR-10's binary version"
        )
    images = records[:, 1:].reshape(-1, CHANNELS, SIDE, SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.copy()


def read_archive(path: Path) -> dict[str, tuple[str, bytes]]:
    """{file name: (where, bytes)} of the six record files in the .tar.gz, read without
    extracting anything."""
    out = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for name in (*TRAIN_FILES, TEST_FILE):
                try:
                    member = tar.getmember(f"{FOLDER}/{name}")
                except KeyError:
                    raise DataError(f"{path}: no member {FOLDER}/{name}") from None
                stream = tar.extractfile(member)
                if stream is None:
                    raise DataError(f"{path}: {FOLDER}/{name} is not a regular file")
                out[name] = (f"{path}:{member.name}", stream.read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read as a .tar.gz ({e})") from None
    return out


def check_sha256(path: Path, verify: bool, files: dict[str, Any]) -> None:
    """Records the file's SHA-256 in files; with verify, refuses one that differs from the pin."""
    digest = sha256_file(path)
    published = CIFAR10_SHA256.get(path.name)
    if verify and published is not None and digest != published:
        raise DataError(
            f"{path}: SHA-256 {digest} differs from the published {published}; fetch it again "
            f"from {URL} (or data.verify_checksum=false for a copy you trust)"
        )
    files[path.name] = {"sha256": digest, "verified": verify and published is not None}


def read_cifar10_bytes(
    directory: Path, verify: bool, files: dict[str, Any]
) -> dict[str, tuple[str, bytes]]:
    """{file name: (where, bytes)} of the record files in directory: from the archive if present,
    else the extracted .bin files (in directory or in its cifar-10-batches-bin/ folder)."""
    archive = directory / ARCHIVE
    if archive.is_file():
        check_sha256(archive, verify, files)
        return read_archive(archive)
    folder = directory / FOLDER if (directory / FOLDER / TEST_FILE).is_file() else directory
    out = {}
    for name in (*TRAIN_FILES, TEST_FILE):
        path = folder / name
        if not path.is_file():
            raise DataError(
                f"data.dir: no {ARCHIVE} and no {name} in {directory}; {get_hint(directory)}"
            )
        check_sha256(path, verify, files)
        try:
            out[name] = (str(path), path.read_bytes())
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e})") from None
    return out


def load_cifar10_arrays(directory: Path, verify: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train uint8 [50000, 32, 32, 3], test uint8 [10000, 32, 32, 3], files) for the official
    files; any whole number of records per file is accepted (the checksum pins the real ones)."""
    if not directory.is_dir():
        raise DataError(f"data.dir: folder {directory} does not exist; {get_hint(directory)}")
    files: dict[str, Any] = {}
    raw = read_cifar10_bytes(directory, verify, files)
    train = np.concatenate([parse_records(raw[n][1], raw[n][0])[0] for n in TRAIN_FILES])
    test = parse_records(raw[TEST_FILE][1], raw[TEST_FILE][0])[0]
    return train, test, files
