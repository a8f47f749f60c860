"""Draw the analysis notebook's figures for a saved run:
python scripts/analyze.py [--run_dir=results/checkpoints/<run_id>] [--workdir=results].

Executes notebooks/analysis.ipynb headless (it never trains) on the run, by default the newest
under results/checkpoints, and writes <workdir>/figures/<run_id>/analysis.html and analysis.ipynb.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.evaluation.cli import analyze_main  # noqa: E402
from src.utils.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(analyze_main))
