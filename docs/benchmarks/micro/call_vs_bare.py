"""Micro-measurement behind docs/performance.md (not part of the package, not tested).

The loop's single-step call (run_steps: metric sums, nan_policy, the step's key derived
inside) against the bare AOT-compiled step, both on one resident batch, with the host
allowed to run 1, 2, 4 or any number of calls ahead of the device. Alternated, 6 x 600 steps.
Run from the repository root: python docs/benchmarks/micro/call_vs_bare.py baseline
"""

import collections
import statistics
import sys
import time

import jax
from loop_setup import set_up

_, (keys, batches, _, _, state, train_step), run_steps = set_up(sys.argv[1])
batch = batches.chunk(0, 1)
bare_state = jax.tree.map(lambda x: x.copy(), state)
lowered = train_step.lower(bare_state, batch, keys["train"])  # type: ignore[attr-defined]
compiled = lowered.compile()
STEPS = 600
step_keys = [jax.random.fold_in(keys["train"], s) for s in range(STEPS)]
sums = last = None
step = 0  # the global step number, so that every call is a normal (not a halted) step


def bare(ahead: int) -> float:
    """Steps/s of the compiled step, waiting for the call `ahead` calls back (0: never)."""
    global bare_state
    pending: collections.deque = collections.deque()
    tic = time.perf_counter()
    for key in step_keys:
        bare_state, metrics = compiled(bare_state, batch, key)
        pending.append(metrics)
        if ahead and len(pending) > ahead:
            jax.block_until_ready(pending.popleft())
    jax.block_until_ready(bare_state)
    return STEPS / (time.perf_counter() - tic)


def loop_call(ahead: int) -> float:
    """Steps/s of run_steps, waiting for the call `ahead` calls back (0: never waiting)."""
    global state, sums, last, step
    pending: collections.deque = collections.deque()
    tic = time.perf_counter()
    for _ in range(STEPS):
        state, sums, last = run_steps(state, sums, last, batch, keys["train"], step)
        step += 1
        pending.append(last)
        if ahead and len(pending) > ahead:
            jax.block_until_ready(pending.popleft())
    jax.block_until_ready(state)
    return STEPS / (time.perf_counter() - tic)


variants = {
    "bare step, 1 ahead": lambda: bare(1),
    "bare step, unbounded (benchmark.py)": lambda: bare(0),
    "loop call, 1 ahead (the loop)": lambda: loop_call(1),
    "loop call, 2 ahead": lambda: loop_call(2),
    "loop call, 4 ahead": lambda: loop_call(4),
    "loop call, unbounded": lambda: loop_call(0),
}
for run in variants.values():  # compile and warm up
    run()
rates: dict[str, list[float]] = {name: [] for name in variants}
for _ in range(6):
    for name, run in variants.items():
        rates[name].append(run())
for name, values in rates.items():
    print(f"{name}: median {statistics.median(values):.0f} steps/s, {[round(v) for v in values]}")
