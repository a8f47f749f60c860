"""Runs the train command several times in ONE interpreter (one JAX start-up, one device setup).

Used by tests that need several runs on a forced multi-device CPU platform:
python -m tests.run_many '[["--config=...", "--run_id=a"], ["--run_id=a", "--resume"]]'
Exits with the first non-zero status.
"""

from __future__ import annotations

import json
import sys

from src.utils.reproducibility import configure_determinism

if __name__ == "__main__":
    configure_determinism(gpu=True)
    from src.training.cli import train_main as main
    from src.utils.cli import run

    for argv in json.loads(sys.argv[1]):
        status = run(main, argv)
        if status:
            sys.exit(status)
