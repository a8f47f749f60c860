"""Run a sweep: python scripts/sweep.py --config=configs/sweep/beta.yaml [--workers=2] [--workdir=results].

A signal stops it after its running trials have saved and stopped: exit 128 + signal number.
"""

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.experiments.cli import sweep_main  # noqa: E402
from src.experiments.runner import stopped_by  # noqa: E402
from src.utils.cli import interrupted_status, run  # noqa: E402


def main() -> int:
    try:
        status = run(sweep_main)
    except KeyboardInterrupt:  # Ctrl-C outside the trials' run (loading, summary): no traceback
        print("sweep: interrupted (SIGINT)", file=sys.stderr)
        return interrupted_status(signal.SIGINT)
    signum = stopped_by()
    return interrupted_status(signum) if signum is not None else status


if __name__ == "__main__":
    sys.exit(main())
