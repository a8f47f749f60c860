"""Draft an EXPERIMENTS.md entry: python scripts/log_experiment.py --run_dir=results/checkpoints/<id>."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.experiments.cli import log_experiment_main  # noqa: E402
from src.utils.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(log_experiment_main))
