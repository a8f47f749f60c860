"""A run's pieces built from its config: keys, data, devices, model and optimizer, state, steps.

setup(cfg) is the one set-up of training, the dry run, the benchmark and the tests;
scripts/evaluate.py builds the same state abstractly (abstract_train_state) to restore into.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from src.data.batches import DeviceBatches, StreamedBatches, make_batches
from src.data.pipeline import Splits, load_splits, planned_steps
from src.models.registry import build_model, latent_groups, latent_units
from src.training.device.parallel import (
    check_backend,
    check_eval_batch,
    make_mesh,
    replicated,
    select_devices,
    split_on_devices,
)
from src.training.keys import run_keys
from src.training.optim import build_optimizer
from src.training.state import TrainState, init_state, split_model
from src.training.step import Objective, Stability, StepFn, make_eval_step, make_train_step
from src.utils.reproducibility import seed_host_rngs


class Setup(NamedTuple):
    """Everything a run needs before its first step."""

    keys: dict[str, jax.Array]  # init / data / train / eval
    splits: Splits
    steps_per_epoch: int
    total_steps: int
    mesh: Mesh  # 1-D, axis "data"
    batches: DeviceBatches | StreamedBatches  # as data.on_device chooses
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state: TrainState  # the initial state, replicated over the mesh (the canonical layout)
    train_step: StepFn  # (state, batch, key, active) -> (state, metrics), for parallel.backend
    eval_step: Callable[..., dict[str, jax.Array]]  # (params, batch, mask, key) -> sums
    latent_groups: tuple[int, ...] | None  # units per latent group (hierarchical), else None


def setup(cfg: Any) -> Setup:
    """Builds cfg's run: keys, data and batches, mesh, model, optimizer, initial state, steps.

    Every host holds the data and feeds only its rows of each global batch. In a multi-host
    run, jax.distributed must be initialized first.
    """
    tcfg = cfg.training
    seed_host_rngs(tcfg.seed)
    keys = run_keys(tcfg.seed)
    splits = load_splits(cfg.data)
    per_epoch, total_steps = planned_steps(tcfg, len(splits.train))
    check_backend(cfg.parallel.backend)
    mesh = make_mesh(select_devices(cfg.parallel.num_devices, tcfg.batch_size))
    check_eval_batch(cfg.eval.batch_size, mesh)
    batches = make_batches(
        splits.train, keys["data"], tcfg.batch_size, per_epoch, split_on_devices(mesh), cfg.data
    )
    image_shape = splits.train.shape[1:]
    graphdef, tx, schedule, state = build_state(cfg, image_shape, total_steps, keys["init"])
    return Setup(
        keys=keys,
        splits=splits,
        steps_per_epoch=per_epoch,
        total_steps=total_steps,
        mesh=mesh,
        batches=batches,
        graphdef=graphdef,
        tx=tx,
        schedule=schedule,
        state=jax.device_put(state, replicated(mesh)),
        train_step=build_train_step(cfg, graphdef, tx, schedule, mesh, image_shape=image_shape),
        eval_step=make_eval_step(graphdef, mesh, latent_dim=latent_units(cfg.model, image_shape)),
        latent_groups=latent_groups(cfg.model, image_shape),
    )


def build_state(
    cfg: Any, image_shape: Sequence[int], total_steps: int, init_key: jax.Array | None
) -> tuple[nnx.GraphDef, optax.GradientTransformation, optax.Schedule, TrainState]:
    """(graphdef, optimizer, learning-rate schedule, initial TrainState) of cfg's model.

    NNX is left here, once: the state holds the parameters as a nested dict. With init_key
    None the state is abstract (ShapeDtypeStructs; nothing is allocated).
    """
    if init_key is None:
        model = nnx.eval_shape(lambda: build_model(cfg.model, image_shape, nnx.Rngs(0)))
    else:
        model = build_model(cfg.model, image_shape, nnx.Rngs(params=init_key))
    graphdef, params = split_model(model)
    tx, schedule = build_optimizer(cfg.optimizer, cfg.training.lr, total_steps)
    with_ema = cfg.training.ema.decay > 0
    if init_key is None:
        abstract = jax.eval_shape(lambda p: init_state(p, tx, with_ema), params)
        return graphdef, tx, schedule, abstract
    return graphdef, tx, schedule, init_state(params, tx, with_ema)


def abstract_train_state(
    cfg: Any, image_shape: Sequence[int], total_steps: int
) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, TrainState of ShapeDtypeStructs) that cfg builds, without allocating arrays:
    the target a saved state is restored into."""
    graphdef, _, _, state = build_state(cfg, image_shape, total_steps, None)
    return graphdef, state


def build_train_step(
    cfg: Any,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    backend: str | None = None,
    image_shape: Sequence[int] | None = None,
) -> StepFn:
    """cfg's compiled train step (src/training/step.py) for backend (default parallel.backend).

    image_shape (H, W, C) sizes the noise of a hierarchical model (all its groups' units); the
    one-group families draw model.latent_dim and need none."""
    tcfg = cfg.training
    if image_shape is None and cfg.model.type == "hierarchical":
        raise ValueError("build_train_step needs image_shape for a hierarchical model")
    units = cfg.model.latent_dim if image_shape is None else latent_units(cfg.model, image_shape)
    return make_train_step(
        graphdef,
        tx,
        schedule,
        mesh,
        backend=backend or cfg.parallel.backend,
        latent_dim=units,
        kl=tcfg.kl,
        dynamic_binarize=cfg.data.binarize == "dynamic",
        nan_policy=tcfg.nan_policy,
        objective=Objective.from_config(tcfg),
        stability=Stability.from_config(tcfg),
    )
