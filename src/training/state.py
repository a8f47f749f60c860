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
    # Exponential moving average of params (training.ema.decay > 0), else None: an empty
    # subtree, so a state without EMA has exactly the leaves (and checkpoints) it had before.
    ema: Any = None


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict]:
    """Crosses from NNX to pure JAX once: (static graph, nested dict of parameter arrays)."""
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


def init_state(params: Any, tx: optax.GradientTransformation, with_ema: bool = False) -> TrainState:
    """The state before step 1; with_ema: the EMA starts as a copy of params (own buffers, as the
    step donates the state)."""
    ema = jax.tree.map(jnp.copy, params) if with_ema else None
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), ema)


def update_ema(ema: Any, params: Any, decay: float) -> Any:
    """ema <- decay * ema + (1 - decay) * params, after each applied update (Polyak averaging, as
    VDVAE and NVAE evaluate their models); None stays None."""
    if ema is None:
        return None
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def eval_params(state: TrainState, use_ema: bool) -> Any:
    """The parameters that validation, model_best and evaluate.py score: the EMA when the run
    keeps one and eval.use_ema is true, else the trained params."""
    return state.ema if use_ema and state.ema is not None else state.params


def param_count(params: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def param_bytes(params: Any) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(params))
