"""The train step of another commit against this tree's: speed alternated, bits compared.

python scripts/experiments/ab_step.py COMMIT CONFIG [--steps=N] [--repeats=R] [KEY=VALUE ...]

A measurement harness for docs/performance.md, not part of the package. Loads
src/training/step.py as it was at COMMIT (the rest of the code is this tree's, so the two
must share their interfaces), builds CONFIG's step with each (src/training/setup.py), and
times both and the plain reference step (src/experiments/benchmark.py:reference_step)
alternately, `--steps` back-to-back calls on one resident batch per timing. After the timings
both steps have run the same keys on the same batch from the same state, so their states and
last metrics must be equal bit for bit when the change keeps the numbers; it prints whether
they are.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import src.training.setup as setup_module  # noqa: E402
import src.training.step as step_module  # noqa: E402
from src.experiments.benchmark import alternate, reference_step, step_timer  # noqa: E402
from src.utils.config import load_config  # noqa: E402


def step_module_at(commit: str, folder: Path) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{commit}:src/training/step.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = folder / "step_at_commit.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("step_at_commit", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timer(cfg: Any, module: ModuleType, steps: int) -> tuple[Callable[[], float], dict]:
    """cfg's step built with module's make_train_step; time_steps() -> steps/s, and the latest
    (state, metrics) it produced."""
    setup_module.make_train_step = module.make_train_step
    try:
        run = setup_module.setup(cfg)
    finally:
        setup_module.make_train_step = step_module.make_train_step
    batch, train_step = run.batches(0), cast(Any, run.train_step)  # 3 or 4 arguments
    # This tree's step takes `active` (True: apply the update); older ones do not.
    takes_active = len(inspect.signature(train_step).parameters) == 4

    def step(state: Any, batch: jax.Array, key: jax.Array) -> tuple:
        return (
            train_step(state, batch, key, True) if takes_active else train_step(state, batch, key)
        )

    keys = [jax.random.fold_in(run.keys["train"], s) for s in range(steps)]
    return step_timer(step, run.state, batch, keys)


def same_bits(a: Any, b: Any) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(leaves_a, leaves_b, strict=True)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commit")
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args, overrides = parser.parse_known_args()
    cfg = load_config(args.config, None, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        old = step_module_at(args.commit, Path(tmp))
        time_old, latest_old = timer(cfg, old, args.steps)
    time_new, latest_new = timer(cfg, step_module, args.steps)
    timers = {args.commit: time_old, "this tree": time_new}
    timers["reference"] = reference_step(cfg, args.steps)
    runs = alternate(timers, args.repeats)
    reference = statistics.median(runs["reference"])
    for name, rates in runs.items():
        rate = statistics.median(rates)
        singles = " ".join(f"{r:.0f}" for r in rates)
        print(f"{name:12s} {rate:8.1f} steps/s  / reference {rate / reference:.3f}  ({singles})")
    print("states equal bit for bit:", same_bits(latest_old["state"], latest_new["state"]))
    print("metrics equal bit for bit:", same_bits(latest_old["metrics"], latest_new["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
