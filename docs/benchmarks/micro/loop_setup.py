"""Set-up shared by the micro-measurements that drive the loop's compiled call (not part of
the package, not tested).

Importing it puts the repository root on the path and sets the deterministic XLA flags, as
scripts/train.py does; XLA reads them when the first computation starts the backend.
"""

import sys

sys.path.insert(0, ".")
from src.utils.reproducibility import configure_determinism  # noqa: E402

configure_determinism(True)  # compile.deterministic_gpu, the default

from typing import Any  # noqa: E402

from src.training.multistep import MultiStepFn, make_multi_step  # noqa: E402
from src.training.setup import setup  # noqa: E402
from src.utils.config import load_config  # noqa: E402


def set_up(experiment: str) -> tuple[Any, tuple, MultiStepFn]:
    """(config, (keys, batches, steps_per_epoch, mesh, state, train_step) as the loop builds
    them, the loop's run_steps) for configs/experiment/<experiment>.yaml."""
    cfg = load_config(f"configs/experiment/{experiment}.yaml")
    s = setup(cfg)
    t = cfg.training
    parts = (s.keys, s.batches, s.steps_per_epoch, s.mesh, s.state, s.train_step)
    return cfg, parts, make_multi_step(s.train_step, t.nan_policy, t.batch_size, s.mesh)
