"""The download_data command (scripts/download_data.py): fetch a dataset's IDX files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from src.data.catalog import IDX_DATASETS
from src.data.download import download_dataset
from src.utils.cli import ArgumentParser


def download_data_main(argv: Sequence[str]) -> int:
    parser = ArgumentParser(
        prog="download_data.py",
        description="Download a dataset's IDX files into a folder, verifying their SHA-256.",
    )
    parser.add_argument("--dataset", required=True, choices=sorted(IDX_DATASETS))
    parser.add_argument("--dir", help="target folder (default: data/<dataset>), i.e. data.dir")
    parser.add_argument(
        "--mirror",
        help="base URL holding the .gz files (http(s):// or file://); default per dataset",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the SHA-256 check (re-compressed mirrors)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per connection")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    directory = Path(args.dir or f"data/{args.dataset}")
    mirror = args.mirror or IDX_DATASETS[args.dataset].mirror
    paths = download_dataset(
        args.dataset, directory, mirror, not args.no_verify, args.timeout, args.quiet
    )
    print(f"{args.dataset}: {len(paths)} files in {directory}; set data.dir={directory}")
    return 0
