"""Micro-measurement behind docs/performance.md (not part of the package, not tested).

Time DeviceBatches.chunk takes at an epoch change (digits-sized split: 1437 rows, batch 64,
22 steps per epoch), median of 200 changes: dispatch alone, and until the batch is ready.
Copied into a checkout of an earlier commit it measures that commit's epoch order.
Run from the repository root: python docs/benchmarks/micro/epoch_change.py
"""

import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, ".")
from src.data.batches import DeviceBatches  # noqa: E402
from src.training.device.parallel import make_mesh, split_on_devices  # noqa: E402

x = np.random.default_rng(0).random((1437, 64), dtype=np.float32)
batches = DeviceBatches(x, jax.random.key(0), 64, 22, split_on_devices(make_mesh(jax.devices())))
for epoch in range(3):  # compiles
    jax.block_until_ready(batches.chunk(epoch * 22, 1))
dispatch, ready = [], []
for epoch in range(3, 203):
    tic = time.perf_counter()
    batches.chunk(epoch * 22, 1)
    dispatch.append(time.perf_counter() - tic)
for epoch in range(203, 403):
    tic = time.perf_counter()
    jax.block_until_ready(batches.chunk(epoch * 22, 1))
    ready.append(time.perf_counter() - tic)
print(
    f"epoch change: dispatch {1e3 * statistics.median(dispatch):.2f} ms, "
    f"until ready {1e3 * statistics.median(ready):.2f} ms"
)
