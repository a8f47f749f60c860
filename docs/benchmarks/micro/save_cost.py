"""Micro-measurement behind docs/performance.md (not part of the package, not tested).

What one Orbax save of a config's train state costs:
- alone: wall and process CPU time of save + wait, for the state as jax.Arrays (what Orbax
  received before 4e9296e) and as host numpy copies (what checkpoint.save passes it now);
- in training: the bare compiled step run one call ahead, as the loop runs it, 6 x 1500
  steps without saves against 6 x 1500 steps with checkpoint.save every 100 steps.
Run from the repository root: python docs/benchmarks/micro/save_cost.py baseline
"""

import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, ".")
from src.utils.reproducibility import configure_determinism  # noqa: E402

configure_determinism(True)  # compile.deterministic_gpu, the default

import jax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from src.training.run import checkpoint  # noqa: E402
from src.training.setup import setup  # noqa: E402
from src.utils.config import load_config  # noqa: E402

cfg = load_config(f"configs/experiment/{sys.argv[1]}.yaml")
run = setup(cfg)
keys, batches, state, train_step = run.keys, run.batches, run.state, run.train_step
folder = Path(tempfile.mkdtemp())
STEPS, EVERY = 1500, 100


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def alone(as_numpy: bool, saves: int = 12) -> tuple[float, float]:
    """Median wall and mean CPU milliseconds of save + wait, after 2 warm-up saves."""
    manager = checkpoint.make_manager(folder / f"alone{time.time_ns()}", 1)
    tree = jax.device_get(state) if as_numpy else state
    walls, cpu = [], 0.0
    for step in range(saves + 2):
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave({"step": step})
        )
        tic, cpu0 = time.perf_counter(), cpu_s()
        manager.save(step, args=args, force=True)
        manager.wait_until_finished()
        if step >= 2:
            walls.append(time.perf_counter() - tic)
            cpu += cpu_s() - cpu0
    return 1e3 * statistics.median(walls), 1e3 * cpu / saves


def training(save_every: int) -> float:
    """Seconds for STEPS steps, one call ahead as the loop, saving every save_every steps."""
    global state
    manager = checkpoint.make_manager(folder / f"loop{time.time_ns()}", 1)
    batch = batches(0)
    metrics = previous = None
    tic = time.perf_counter()
    for step in range(1, STEPS + 1):
        state, metrics = train_step(state, batch, jax.random.fold_in(keys["train"], step))
        jax.block_until_ready(previous)
        previous = metrics
        if save_every and step % save_every == 0:
            checkpoint.save(manager, step, state, {"step": step})
    jax.block_until_ready(metrics)
    checkpoint.wait(manager)
    return time.perf_counter() - tic


print(f"{len(jax.tree.leaves(state))} arrays")
for as_numpy in (False, True, False, True):
    wall, cpu = alone(as_numpy)
    print(f"alone, {'numpy' if as_numpy else 'jax.Array'}: wall {wall:.1f} ms, CPU {cpu:.1f} ms")
training(0)  # compiles
plain, saving = [], []
for _ in range(6):
    plain.append(training(0))
    saving.append(training(EVERY))
per_save = (statistics.median(saving) - statistics.median(plain)) / (STEPS // EVERY)
print(
    f"training, {STEPS} steps: {statistics.median(plain):.2f} s without saves, "
    f"{statistics.median(saving):.2f} s with {STEPS // EVERY}: {1e3 * per_save:.1f} ms per save"
)
