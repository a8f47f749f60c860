"""Fetch MNIST / Fashion-MNIST IDX files: python scripts/download_data.py --dataset=mnist --dir=data/mnist."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data.cli import download_data_main  # noqa: E402
from src.utils.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(download_data_main))
