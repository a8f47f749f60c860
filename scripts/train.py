"""Train a VAE: python scripts/train.py --config=configs/experiment/baseline.yaml [--config.KEY=VALUE]."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.training.cli import train_main  # noqa: E402
from src.utils.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(train_main))
