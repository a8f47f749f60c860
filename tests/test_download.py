"""scripts/download_data.py against a local HTTP server and a file:// mirror (no internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from src.data.download import download_files, progress_line
from src.data.pipeline import load_splits
from src.utils.config import load_config
from src.utils.errors import DataError
from tests.helpers import BASELINE, run_script, write_idx_dataset


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A folder holding a small, valid gzipped IDX dataset: the 'published' files."""
    write_idx_dataset(tmp_path / "mirror", n_train=30, n_test=10, gz=True)
    return tmp_path / "mirror"


@pytest.fixture
def server(mirror: Path) -> Iterator[str]:
    """http://127.0.0.1:PORT serving the mirror folder."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def checksums(folder: Path) -> dict[str, str | None]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_download_over_http_verifies_and_loads(tmp_path: Path, mirror: Path, server: str):
    out = tmp_path / "data"
    bar = io.StringIO()
    paths = download_files(checksums(mirror), out, server, 10.0, bar)
    assert sorted(p.name for p in paths) == sorted(checksums(mirror))
    for p in paths:
        assert p.read_bytes() == (mirror / p.name).read_bytes()
    assert "100%" in bar.getvalue() and "[" + "#" * 30 + "]" in bar.getvalue()
    assert not list(out.glob(".part-*"))
    cfg = load_config(
        BASELINE, {"data": "mnist"}, [f"data.dir={out}", "data.verify_checksum=false"]
    )
    assert load_splits(cfg.data).test.shape == (10, 28, 28, 1)
    # A second run keeps the files that already match.
    again = io.StringIO()
    download_files(checksums(mirror), out, server, 10.0, again)
    assert again.getvalue().count("present, checksum ok") == 4


def test_checksum_mismatch_keeps_nothing(tmp_path: Path, mirror: Path, server: str):
    wrong = {name: "0" * 64 for name in checksums(mirror)}
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: SHA-256 \w+ differs from"):
        download_files(
            {"train-images-idx3-ubyte.gz": wrong["train-images-idx3-ubyte.gz"]},
            tmp_path / "d",
            server,
            10.0,
            None,
        )
    assert list((tmp_path / "d").iterdir()) == []


def test_non_idx_answer_and_missing_file_are_data_errors(tmp_path: Path, mirror: Path, server: str):
    (mirror / "page.gz").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="cannot read"):
        download_files({"page.gz": None}, tmp_path / "d", server, 10.0, None)
    with pytest.raises(DataError, match=r"cannot fetch http://127.0.0.1:\d+/absent.gz: .*--mirror"):
        download_files({"absent.gz": None}, tmp_path / "d", server, 10.0, None)
    assert list((tmp_path / "d").iterdir()) == []


def test_progress_line():
    assert progress_line("f.gz", 5_000_000, 10_000_000, 10) == "f.gz [#####.....]  50%  5.0/10.0 MB"
    assert progress_line("f.gz", 1_500_000, None, 10) == "f.gz 1.5 MB"


def test_script_with_a_file_mirror(tmp_path: Path, mirror: Path):
    out = tmp_path / "fetched"
    args = ("--dataset=mnist", f"--dir={out}", f"--mirror={mirror.as_uri()}")
    # The generated files are not the published MNIST: verification refuses them, status 2.
    refused = run_script("download_data.py", *args, "--quiet", timeout=120)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "differs from the published 440fcabf" in lines[0]
    ok = run_script("download_data.py", *args, "--no-verify", timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "4 files in" in ok.stdout and "100%" in ok.stderr
    np.testing.assert_array_equal(sorted(p.name for p in out.iterdir()), sorted(checksums(mirror)))
    bad = run_script("download_data.py", "--dataset=cifar", timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'cifar'" in bad.stderr
