"""Micro-measurement behind docs/performance.md (not part of the package, not tested).

The loop's single-step call fed by DeviceBatches.chunk (one gather dispatched per call, as
the loop does) against the same call fed one pre-gathered batch, alternating, 4 x 400 steps.
Run from the repository root: python docs/benchmarks/micro/gather_ab.py conv
"""

import statistics
import sys
import time

import jax
from loop_setup import set_up

_, (keys, batches, per_epoch, _, state, _), run_steps = set_up(sys.argv[1])
fixed = batches.chunk(0, 1)
sums = last = None
STEPS = 400


def steps_per_s(pre_gathered: bool) -> float:
    global state, sums, last
    tic = time.perf_counter()
    for s in range(STEPS):
        batch = fixed if pre_gathered else batches.chunk(s % per_epoch, 1)
        previous = last
        state, sums, last = run_steps(state, sums, last, batch, keys["train"], s)
        jax.block_until_ready(previous)  # one call ahead, as the loop
    jax.block_until_ready(state)
    return STEPS / (time.perf_counter() - tic)


steps_per_s(True), steps_per_s(False)  # compile
runs: dict[bool, list[float]] = {True: [], False: []}
for _ in range(4):
    for pre in (True, False):
        runs[pre].append(steps_per_s(pre))
ratio = statistics.median(runs[False]) / statistics.median(runs[True])
print(f"pre-gathered {runs[True]}\nchunk {runs[False]}\nmedian chunk / pre-gathered {ratio:.3f}")
