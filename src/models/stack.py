"""A stack of n identical blocks with stacked parameters, applied with lax.scan.

The blocks are created with nnx.vmap (one parameter array per weight, leading axis n) and run
by jax.lax.scan over that axis, so XLA compiles one block whatever n is: the compile time of a
deep hierarchy does not grow with its depth.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
from flax import nnx

# XLA's cost analysis counts a loop body once, whatever its trip count: the dry run traces the
# step once more with the stacks unrolled to count their FLOPs (see unrolled).
_UNROLL = {"on": False}


@contextlib.contextmanager
def unrolled() -> Iterator[None]:
    """Within the block, stacks traced by Stack.scan are fully unrolled (same numbers, one
    copy of the block per layer in the program): for FLOP counts, not for training."""
    _UNROLL["on"] = True
    try:
        yield
    finally:
        _UNROLL["on"] = False


class Stack(nnx.Module):
    """n blocks make(rngs) with their parameters stacked on a leading axis of length n."""

    def __init__(self, make: Callable[[nnx.Rngs], nnx.Module], n: int, *, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=n)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs: nnx.Rngs) -> nnx.Module:
            return make(rngs)

        self.blocks = create(rngs)
        self.n = n
        self.unroll = False  # model.hierarchical.unroll: set by the model's builder

    def scan(
        self,
        fn: Callable[[Any, Any, Any], tuple[Any, Any]],
        carry: Any,
        xs: Any,
        reverse: bool = False,
    ) -> Any:
        """lax.scan of fn(block, carry, x) -> (carry, y) over the blocks in order (last first if
        reverse), block i getting xs[i]; returns (carry, ys stacked [n, ...]). With self.unroll
        the scan is unrolled: one copy of the block per layer in the program (faster steps,
        compile time growing with n; equal numbers up to float rounding)."""
        graphdef, state = nnx.split(self.blocks)

        def body(c: Any, inputs: Any) -> tuple[Any, Any]:
            params, x = inputs
            return fn(nnx.merge(graphdef, params), c, x)

        return jax.lax.scan(
            body,
            carry,
            (state, xs),
            reverse=reverse,
            unroll=True if self.unroll or _UNROLL["on"] else 1,
        )

    def block(self, i: int) -> nnx.Module:
        """Block i alone (its slice of the stacked parameters), for code that walks the stack
        in Python (sampling in evaluation)."""
        graphdef, state = nnx.split(self.blocks)
        return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
