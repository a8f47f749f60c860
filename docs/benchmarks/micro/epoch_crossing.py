"""Micro-measurement behind docs/performance.md (not part of the package, not tested).

The loop's single-step calls (DeviceBatches.chunk + run_steps, one call ahead) over 2000
steps that stay in epoch 0 against 2000 steps that cross an epoch every steps_per_epoch steps
(22 for the baseline), each also with a host read every 20 steps as at a logging boundary;
4 alternated repeats. Copied (with loop_setup.py) into a checkout of a526db7 it measures the
eager epoch order that 8d4eac5 replaced.
Run from the repository root: python docs/benchmarks/micro/epoch_crossing.py baseline
"""

import statistics
import sys
import time

import jax
from loop_setup import set_up

_, (keys, batches, per_epoch, _, state, _), run_steps = set_up(sys.argv[1])
STEPS = 2000


def steps_per_s(cross: bool, read: bool) -> float:
    global state
    sums = last = None
    tic = time.perf_counter()
    for s in range(STEPS):
        previous = last
        batch = batches.chunk(s if cross else s % per_epoch, 1)
        state, sums, last = run_steps(
            state, None if s % 20 == 0 else sums, last, batch, keys["train"], s
        )
        jax.block_until_ready(previous)
        if read and (s + 1) % 20 == 0:
            jax.device_get((state.step, sums))
    jax.block_until_ready(state)
    return STEPS / (time.perf_counter() - tic)


variants = {
    "one epoch": (False, False),
    "crossing epochs": (True, False),
    "one epoch, read every 20": (False, True),
    "crossing epochs, read every 20": (True, True),
}
steps_per_s(True, True)  # compiles
runs: dict[str, list[float]] = {name: [] for name in variants}
for _ in range(4):
    for name, args in variants.items():
        runs[name].append(steps_per_s(*args))
for name, rates in runs.items():
    print(f"{name}: median {statistics.median(rates):.0f} steps/s {[round(r) for r in rates]}")
