"""The train state: a plain pytree, so the step is a pure function and Orbax can save it."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any  # nested dict of arrays (nnx pure dict)
    opt_state: Any  # optax state for params


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict]:
    """Crosses from NNX to pure JAX once: (static graph, nested dict of parameter arrays)."""
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


def init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def param_count(params: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def param_bytes(params: Any) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(params))
