"""Evaluate a saved run: python scripts/evaluate.py --run_dir=results/checkpoints/<run_id>
[--checkpoint=best|last] [--split=test|val|train] [--config.eval.KEY=VALUE]."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.utils.reproducibility import configure_determinism  # noqa: E402

configure_determinism(
    gpu=True
)  # before JAX is imported anywhere; evaluation is always deterministic

from src.evaluation.cli import evaluate_main  # noqa: E402
from src.utils.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(evaluate_main))
