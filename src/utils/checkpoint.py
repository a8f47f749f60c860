"""Orbax checkpoints of the full train state: model_last (latest steps) and model_best.

Two managers, because Orbax's best_fn with max_to_keep=1 would delete the latest step. Each
checkpoint holds the state pytree and a JSON item with the step's metrics. States are restored
onto an abstract target, so the device layout of the restoring process decides placement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from src.utils.errors import RunDirError


def make_manager(directory: Path, max_to_keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an (asynchronous) save; call manager.wait_until_finished() before exiting."""
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
    )


def restore(
    manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """Restores (state, meta) at step (default: latest) onto abstract_state's shapes and shardings."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise RunDirError(f"no complete checkpoint in {manager.directory}")
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["meta"]


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs of tree's leaves, placed with sharding (an Orbax restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
