"""Run a sweep: python scripts/sweep.py --config=configs/sweep/beta.yaml [--workers=2] [--workdir=results].

A signal stops it after its running trials have saved and stopped: exit 128 + signal number.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.experiments.cli import sweep_main  # noqa: E402
from src.utils.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(sweep_main))
