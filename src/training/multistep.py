"""Train steps in compiled calls: the loop's only way to run steps.

One call runs n steps with lax.scan: n = training.steps_per_call = K where K steps fit before
the next logging, eval or checkpoint boundary (steps_until_boundary), else n = 1, so a K that
divides none of the intervals is handled, not refused, and at most two programs are compiled
(three when K exceeds an epoch and a step: src/data/batches.py:DeviceBatches.chunk).
Step s uses the batch and key of its global number (fold_in(train_key, s)) and adds its metrics
to the logging interval's sums on the device in step order, so parameters, optimizer state
and float32 sums do not depend on K. Calls may span two epochs.

Nothing in a call needs the host: the loop reads results only at boundaries.

nan_policy stop without a per-step wait: a non-finite step leaves the state at the last good
step (the step's own guard), so state.step falls behind the step number; every later step,
in this call or the next ones, sees that and is a no-op. The loop finds the stop at its next
boundary from state.step, where the run ends exactly as if it had stopped at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from src.data.batches import Rows, batch_spec, gather
from src.training.keys import step_key
from src.training.state import TrainState

Metrics = dict[str, jax.Array]
MultiStepFn = Callable[
    [TrainState, Metrics | None, Metrics | None, jax.Array | Rows, jax.Array, int],
    tuple[TrainState, Metrics, Metrics],
]
LAST = ("loss", "grad_norm")  # what the run record reports of the step that stopped a run


def steps_until_boundary(step: int, every: Sequence[int], total_steps: int) -> int:
    """Steps from `step` to the next multiple of any of `every`, or to total_steps if sooner."""
    return min([total_steps - step, *(e - step % e for e in every)])


def make_multi_step(
    train_step: Callable[..., tuple[TrainState, Metrics]],
    nan_policy: str,
    batch_size: int,
    mesh: Mesh,
) -> MultiStepFn:
    """Builds run_steps(state, sums, last, batches, train_key, first_step) -> (state, sums, last).

    Args of run_steps:
      state: TrainState before step first_step (donated).
      sums: the open logging interval's metric sums, or None for an empty interval.
      last: loss and grad_norm of the last step run so far, or None at the start.
      batches: [n * batch_size, ...], the batches of steps first_step .. first_step + n - 1,
        or Rows to gather them from (inside the call).
      train_key: the step-noise stream; step s draws from fold_in(train_key, s).
      first_step: the global step number of the first batch.
    Returns the state after the call, sums plus the metrics of every applied (or, with
    nan_policy skip, skipped) step, and last updated by every step run. With nan_policy stop
    the non-finite step adds nothing to sums (the interval ends at the last good step) and sets
    last to its values; the no-op steps after it change nothing.
    """
    stop = nan_policy == "stop"

    def run(
        state: TrainState, sums: Metrics, last: Metrics, batches: jax.Array | Rows, train_key, first
    ):
        batches = gather(batches)
        xs = batches.reshape(-1, batch_size, *batches.shape[1:])

        def one(carry: tuple, inputs: tuple) -> tuple[tuple, None]:
            state, sums, last = carry
            i, x = inputs
            # nan_policy stop: once a step was non-finite, state.step lags behind the step
            # number (any(): a pmap-stacked state has one counter per device) and the step
            # leaves the state as it is (its update sits in a lax.cond; the forward and
            # backward passes stay outside, where XLA on CPU runs convolutions fastest).
            halted = jnp.any(state.step != first + i) if stop else jnp.bool_(False)
            key = step_key(train_key, first + i)
            new, metrics = train_step(state, x, key, jnp.logical_not(halted))
            seen = {k: metrics[k] for k in LAST}
            bad = jnp.bool_(False)
            if stop:
                seen = jax.tree.map(lambda o, n: jnp.where(halted, o, n), last, seen)
                bad = halted | (metrics["nonfinite"] > 0)
            added = jax.tree.map(lambda s, m: jnp.where(bad, s, s + m), sums, metrics)
            return (new, added, seen), None

        if xs.shape[0] == 1:  # no scan: XLA on CPU runs convolutions in a loop body slower
            return one((state, sums, last), (jnp.int32(0), xs[0]))[0]
        steps = jnp.arange(xs.shape[0], dtype=jnp.int32)
        return jax.lax.scan(one, (state, sums, last), (steps, xs))[0]

    jitted = jax.jit(run, donate_argnums=0)
    zeros: dict[str, tuple[Metrics, Metrics]] = {}

    def run_steps(
        state: TrainState,
        sums: Metrics | None,
        last: Metrics | None,
        batches: jax.Array | Rows,
        train_key: jax.Array,
        first_step: int,
    ) -> tuple[TrainState, Metrics, Metrics]:
        if "start" not in zeros:  # 0 + m == m exactly, so starting from zeros keeps sums bit-equal
            one_batch = batch_spec(batches, batch_size)
            shapes = jax.eval_shape(train_step, state, one_batch, train_key, True)[1]
            # Replicated over the mesh, as the call's outputs are: one compilation.
            sharding = NamedSharding(mesh, P())
            zeros["start"] = jax.device_put(
                (
                    jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes),
                    {k: np.zeros(shapes[k].shape, shapes[k].dtype) for k in LAST},
                ),
                sharding,
            )
        sums = zeros["start"][0] if sums is None else sums
        last = zeros["start"][1] if last is None else last
        return jitted(state, sums, last, batches, train_key, np.int32(first_step))

    return run_steps
