"""Data sources: each reads (or generates) a dataset from local files only and returns a Dataset.

Images are float32 [N, H, W, C]. Nothing is downloaded here: a missing file is a DataError
that names the download command (scripts/download_data.py).
"""

from __future__ import annotations

import gzip
import importlib.util
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from src.data import synthetic
from src.data.catalog import IDX_DATASETS, IDX_FILES, download_hint
from src.data.cifar import load_cifar10_arrays
from src.data.idx import read_idx, sha256_file
from src.utils.errors import ConfigError, DataError


class Dataset(NamedTuple):
    """What a source provides; a split that is None is held out from train by the pipeline."""

    train: np.ndarray  # float32 [N, H, W, C]
    val: np.ndarray | None
    test: np.ndarray | None
    info: dict[str, Any]  # JSON-safe facts for provenance.json: files, checksums, generator


def load_digits_images(cfg: Any) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, integer levels 0..16), scaled to [0, 1].

    Reads the CSV that ships inside scikit-learn, as sklearn.datasets.load_digits does, without
    importing sklearn.datasets, whose import is a large part of a short run's start-up.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    origin = spec.origin if spec else None
    csv = Path(origin).parent / "datasets" / "data" / "digits.csv.gz" if origin else None
    if csv is not None and csv.is_file():
        with gzip.open(csv, "rt") as f:
            pixels = np.loadtxt(f, delimiter=",")[:, :-1]  # the last column is the label
    else:  # a scikit-learn that keeps the file elsewhere
        from sklearn.datasets import load_digits

        pixels = load_digits().data
    images = pixels.reshape(-1, 8, 8).astype(np.float32) / 16.0
    return Dataset(images[..., None], None, None, {"source": "sklearn.datasets.load_digits"})


def find_idx_file(directory: Path, base: str, name: str) -> Path:
    """directory/base.gz or directory/base (the .gz, as published, wins when both exist)."""
    for candidate in (directory / f"{base}.gz", directory / base):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"data.dir: no {base}[.gz] in {directory}; fetch it with {download_hint(name, str(directory))}"
    )


def load_idx_pair(
    directory: Path, split: str, name: str, verify: bool, files: dict[str, Any]
) -> np.ndarray:
    """Images of one split ('train' or 't10k' files), validated against their labels file."""
    images_path = find_idx_file(directory, IDX_FILES[f"{split}_images"], name)
    labels_path = find_idx_file(directory, IDX_FILES[f"{split}_labels"], name)
    for path in (images_path, labels_path):
        digest = sha256_file(path)
        published = IDX_DATASETS[name].sha256.get(path.name)
        if verify and published is not None and digest != published:
            raise DataError(
                f"{path}: SHA-256 {digest} differs from the published {published}; fetch it again "
                f"with {download_hint(name, str(directory))} (or data.verify_checksum=false for a "
                "re-compressed copy)"
            )
        files[path.name] = {"sha256": digest, "verified": verify and published is not None}
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return (images.astype(np.float32) / 255.0)[..., None]


def load_idx_dataset(name: str, cfg: Any) -> Dataset:
    """MNIST-style datasets: the four IDX files in data.dir, with their own 10k test split."""
    directory = Path(cfg.dir)
    if not directory.is_dir():
        raise DataError(
            f"data.dir: folder {directory} does not exist; fetch {name} with "
            f"{download_hint(name, str(directory))}"
        )
    files: dict[str, Any] = {}
    train = load_idx_pair(directory, "train", name, cfg.verify_checksum, files)
    test = load_idx_pair(directory, "test", name, cfg.verify_checksum, files)
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"{directory}: training images are {train.shape[1:3]} but test images {test.shape[1:3]}"
        )
    return Dataset(train, None, test, {"dir": str(directory.resolve()), "files": files})


def load_cifar10(cfg: Any) -> Dataset:
    """CIFAR-10's binary version in data.dir (src/data/cifar.py): 50,000 training images and its
    own 10,000 test images, [N, 32, 32, 3] scaled to [0, 1] by /255."""
    directory = Path(cfg.dir)
    train, test, files = load_cifar10_arrays(directory, cfg.verify_checksum)
    info = {"dir": str(directory.resolve()), "files": files}
    return Dataset(to_unit(train), None, to_unit(test), info)


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] (x / 255), scaled in place: one float32 copy of the data."""
    x = images.astype(np.float32)
    x /= np.float32(255.0)
    return x


def as_images(x: np.ndarray, source: str) -> np.ndarray:
    """[N, H, W] -> [N, H, W, 1]; [N, D] -> [N, D, 1, 1]; [N, H, W, C] unchanged."""
    if x.ndim == 2:
        return x[:, :, None, None]
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4:
        return x
    raise DataError(f"{source}: expected [N, D], [N, H, W] or [N, H, W, C], got shape {x.shape}")


def check_array(x: np.ndarray, source: str, low: float, high: float) -> np.ndarray:
    """Validates a numeric array (finite, non-empty, inside [low, high]) and rescales it to [0, 1]."""
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise DataError(f"{source}: expected real numbers, got dtype {x.dtype}")
    if x.ndim < 2:  # a 0-d scalar or a 1-d vector holds no examples of images
        raise DataError(
            f"{source}: expected [N, D], [N, H, W] or [N, H, W, C], got shape {x.shape}"
        )
    if len(x) == 0:
        raise DataError(f"{source}: the array is empty")
    x = np.asarray(x, np.float32)
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise DataError(f"{source}: {bad} NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < low or hi > high:
        raise DataError(
            f"{source}: values span [{lo:g}, {hi:g}], outside data.npz.value_range "
            f"[{low:g}, {high:g}]"
        )
    return as_images((x - low) / (high - low), source)


def check_zip(path: Path) -> None:
    """An .npz file is a zip archive of .npy arrays: anything else (a .npy or a text file
    renamed) is named for what it is, before numpy reads it."""
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"data.npz.path: cannot read {path}: {e.strerror or e}") from None
    if head.startswith(b"PK"):
        return
    what = "a single .npy array, not an .npz archive"
    what = what if head == b"\x93NUMPY" else "not a zip archive"
    raise DataError(
        f"{path}: cannot read as .npz ({what}; np.savez writes a zip of named .npy arrays)"
    )


def load_npz(cfg: Any) -> Dataset:
    """Arrays from one .npz file: train_key, and optional val_key / test_key (else held out)."""
    ncfg = cfg.npz
    path = Path(ncfg.path)
    if not path.is_file():
        raise DataError(f"data.npz.path: no file {path}")
    if not ncfg.train_key:
        raise ConfigError("data.npz.train_key must name the array of training images")
    keys = {"train": ncfg.train_key, "val": ncfg.val_key, "test": ncfg.test_key}
    low, high = ncfg.value_range
    arrays: dict[str, np.ndarray | None] = {}
    check_zip(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            for split, key in keys.items():
                if not key:
                    arrays[split] = None
                    continue
                if key not in archive.files:
                    raise DataError(
                        f"{path}: no array {key!r} (data.npz.{split}_key); "
                        f"arrays in the file: {', '.join(archive.files) or 'none'}"
                    )
                arrays[split] = check_array(archive[key], f"{path}[{key}]", low, high)
    except MemoryError as e:  # a header declaring more than the host holds
        raise DataError(f"{path}: an array is too large for this host's memory ({e})") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read as .npz ({e})") from None
    train = arrays["train"]
    assert train is not None  # train_key is required: an empty key fails the lookup above
    for split in ("val", "test"):
        other = arrays[split]
        if other is not None and other.shape[1:] != train.shape[1:]:
            raise DataError(
                f"{path}: {keys[split]!r} has images of shape {other.shape[1:]}, "
                f"{keys['train']!r} {train.shape[1:]}"
            )
    info = {"path": str(path.resolve()), "sha256": sha256_file(path), "keys": keys}
    return Dataset(train, arrays["val"], arrays["test"], info)


def load_synthetic(cfg: Any) -> Dataset:
    """Generated data with known intrinsic dimension; see src/data/synthetic.py."""
    x, info = synthetic.generate(cfg.synthetic)
    return Dataset(x, None, None, {"generator": info})


SOURCES: dict[str, Callable[[Any], Dataset]] = {
    "digits": load_digits_images,
    "mnist": lambda cfg: load_idx_dataset("mnist", cfg),
    "fashion_mnist": lambda cfg: load_idx_dataset("fashion_mnist", cfg),
    "cifar10": load_cifar10,
    "npz": load_npz,
    "synthetic": load_synthetic,
}


def load_dataset(cfg: Any) -> Dataset:
    """Dispatches on data.name; an unknown name is a config error listing the known ones."""
    if cfg.name not in SOURCES:
        raise ConfigError(f"data.name: unknown dataset {cfg.name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[cfg.name](cfg)
