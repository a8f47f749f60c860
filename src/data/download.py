"""Fetching published IDX datasets into a folder, with SHA-256 verification and a progress bar.

Only scripts/download_data.py calls this; training never downloads anything.
"""

from __future__ import annotations

import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from src.data.idx import read_idx, sha256_file
from src.utils.errors import DataError
from src.utils.io import current_umask

CHUNK = 1 << 16


def progress_line(name: str, done: int, total: int | None, width: int) -> str:
    """'name [#####.....]  50%  1.2/2.4 MB' (or just the bytes when the size is unknown)."""
    mb = f"{done / 1e6:.1f}"
    if not total:
        return f"{name} {mb} MB"
    filled = min(width, done * width // total)
    percent = min(100, done * 100 // total)
    return (
        f"{name} [{'#' * filled}{'.' * (width - filled)}] {percent:3d}%  {mb}/{total / 1e6:.1f} MB"
    )


def fetch(url: str, dest: Path, timeout: float, progress: IO[str] | None) -> None:
    """Copies url (http(s):// or file://) to dest, drawing a progress bar on `progress`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as out:
            size = response.headers.get("Content-Length")
            total = int(size) if size and size.isdigit() else None
            done = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress.write("\r" + progress_line(dest.name, done, total, 30))
                    progress.flush()
        if progress is not None:
            progress.write("\n")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"cannot fetch {url}: {reason}; check --mirror") from None


def download_files(
    files: dict[str, str | None],
    directory: Path,
    mirror: str,
    timeout: float,
    progress: IO[str] | None,
) -> list[Path]:
    """Fetches <mirror>/<name> for each name into directory and checks each.

    Args:
      files: file name -> expected SHA-256 (None: not verified).
    A file already present with the expected checksum is kept. Each download goes to a
    temporary file that replaces the target only after it passed its checksum and parses as
    IDX, so an interrupted or corrupt download never leaves a file the loader would read.
    """
    directory.mkdir(parents=True, exist_ok=True)
    done = []
    for name, expected in files.items():
        target = directory / name
        if target.is_file() and expected is not None and sha256_file(target) == expected:
            if progress is not None:
                progress.write(f"{name}: present, checksum ok\n")
            done.append(target)
            continue
        url = f"{mirror.rstrip('/')}/{name}"
        # The temporary name keeps the real one as its suffix, so read_idx sees the .gz.
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".part-", suffix=f"-{name}")
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide it from others
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            fetch(url, tmp, timeout, progress)
            digest = sha256_file(tmp)
            if expected is not None and digest != expected:
                raise DataError(
                    f"{url}: SHA-256 {digest} differs from the published {expected}; "
                    "try another --mirror (or --no-verify for a re-compressed copy)"
                )
            # A mirror that answers with an HTML error page is caught here, not at training time.
            read_idx(tmp, ndim=3 if "images" in name else 1)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        done.append(target)
    return done


def download_dataset(
    name: str, directory: Path, mirror: str, verify: bool, timeout: float, quiet: bool
) -> list[Path]:
    """Fetches the four .gz files of catalogue dataset `name` (checked against the catalogue)."""
    from src.data.catalog import IDX_DATASETS

    published = IDX_DATASETS[name].sha256.items()
    files = {f: (h if verify else None) for f, h in published if f.endswith(".gz")}
    return download_files(files, directory, mirror, timeout, None if quiet else sys.stderr)
