"""Set-up shared by the micro-measurements that drive the loop's compiled call (not part of
the package, not tested).

Importing it puts the repository root on the path and sets the deterministic XLA flags, as
scripts/train.py does; XLA reads them when the first computation starts the backend.
"""

import sys

sys.path.insert(0, ".")
from src.utils.reproducibility import configure_determinism  # noqa: E402

configure_determinism()

from typing import Any  # noqa: E402

from src.training.benchmark import StepSetup, build_step  # noqa: E402
from src.training.multistep import MultiStepFn, make_multi_step  # noqa: E402
from src.utils.config import load_config  # noqa: E402


def set_up(experiment: str) -> tuple[Any, StepSetup, MultiStepFn]:
    """(config, data/state/step as the loop builds them, the loop's run_steps) for
    configs/experiment/<experiment>.yaml."""
    cfg = load_config(f"configs/experiment/{experiment}.yaml")
    setup = build_step(cfg)
    t = cfg.training
    return cfg, setup, make_multi_step(setup.train_step, t.nan_policy, t.batch_size, setup.mesh)
