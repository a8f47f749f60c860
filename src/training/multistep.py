"""Several train steps in one compiled call (training.steps_per_call = K).

One dispatch runs K steps with lax.scan, so the host does per-call rather than per-step work.
Step s of a call uses the batch and key a single step would (fold_in(train_key, s)) and adds
its metrics to the logging interval's sums in step order, so parameters, optimizer state and
float32 interval sums equal those of K single steps. A call never crosses a logging, eval or
checkpoint boundary (steps_until_boundary); shorter stretches run single steps, so a K that
divides none of the intervals is handled, not refused. Calls may span two epochs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from src.training.state import TrainState

Metrics = dict[str, jax.Array]
MultiStepFn = Callable[
    [TrainState, Metrics | None, jax.Array, jax.Array, int],
    tuple[TrainState, Metrics, jax.Array, Metrics],
]


def steps_until_boundary(step: int, every: Sequence[int], total_steps: int) -> int:
    """Steps from `step` to the next multiple of any of `every`, or to total_steps if sooner."""
    return min([total_steps - step, *(e - step % e for e in every)])


def make_multi_step(
    train_step: Callable[..., tuple[TrainState, Metrics]], nan_policy: str, batch_size: int
) -> MultiStepFn:
    """Builds run_steps(state, sums, batches, train_key, first_step) -> (state, sums, done, last).

    Args of run_steps:
      state: TrainState before step first_step (donated).
      sums: the open logging interval's metric sums, or None for an empty interval.
      batches: [n * batch_size, ...], the batches of steps first_step .. first_step + n - 1.
      train_key: the step-noise stream; step s draws from fold_in(train_key, s).
      first_step: the global step number of the first batch.
    Returns:
      the state after the call; sums plus every applied or skipped step's metrics; done, the
      steps taken (int32; n unless nan_policy stop met a non-finite step); and last, loss and
      grad_norm of the last step run (with stop, the offending step's, as for a single step).

    nan_policy stop: the non-finite step leaves the state at the last good step (the step's own
    guard) and the remaining steps of the call are no-ops, so the loop stops where K = 1 would.
    """
    stop = nan_policy == "stop"

    def run(state: TrainState, sums: Metrics, batches: jax.Array, train_key: jax.Array, first):
        xs = batches.reshape(-1, batch_size, *batches.shape[1:])
        last0 = {"loss": jnp.zeros((), jnp.float32), "grad_norm": jnp.zeros((), jnp.float32)}

        def one(carry: tuple, inputs: tuple) -> tuple[tuple, None]:
            state, sums, done, failed, last = carry
            i, x = inputs

            def take(_: None) -> tuple:
                new, metrics = train_step(state, x, jax.random.fold_in(train_key, first + i))
                bad = metrics["nonfinite"] > 0 if stop else jnp.bool_(False)
                # A stopped step adds nothing, like the single-step loop that breaks before adding.
                added = jax.tree.map(lambda s, m: jnp.where(bad, s, s + m), sums, metrics)
                seen = {k: metrics[k] for k in last}
                return new, added, done + jnp.where(bad, 0, 1), bad, seen

            if not stop:
                return take(None), None
            return jax.lax.cond(failed, lambda _: carry, take, None), None

        init = (state, sums, jnp.int32(0), jnp.bool_(False), last0)
        steps = jnp.arange(xs.shape[0], dtype=jnp.int32)
        state, sums, done, _, last = jax.lax.scan(one, init, (steps, xs))[0]
        return state, sums, done, last

    jitted = jax.jit(run, donate_argnums=0)
    zeros: dict[str, Metrics] = {}

    def run_steps(
        state: TrainState,
        sums: Metrics | None,
        batches: jax.Array,
        train_key: jax.Array,
        first_step: int,
    ) -> tuple[TrainState, Metrics, jax.Array, Metrics]:
        if sums is None:  # 0 + m == m exactly, so starting from zeros keeps the sums bit-equal
            if "sums" not in zeros:
                one_batch = jax.ShapeDtypeStruct((batch_size, *batches.shape[1:]), batches.dtype)
                shapes = jax.eval_shape(train_step, state, one_batch, train_key)[1]
                # Placed like the state, as the sums the call returns are: one compilation.
                zeros["sums"] = jax.device_put(
                    jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), state.step.sharding
                )
            sums = zeros["sums"]
        return jitted(state, sums, batches, train_key, jnp.int32(first_step))

    return run_steps
