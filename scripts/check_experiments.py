"""Fail (status 1) unless every configs/experiment/*.yaml has a complete EXPERIMENTS.md entry."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.experiments.cli import check_experiments_main  # noqa: E402
from src.utils.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(check_experiments_main))
