"""Data parallelism over one mesh axis "data": multi-host setup, devices, state layouts.

The train state has one canonical layout, replicated over the mesh (NamedSharding(mesh, P())):
that is what is saved, restored and validated, so checkpoints do not depend on the device
count, and it is also what the jit and shard_map steps take. The pmap backend keeps the state
stacked with a leading device axis while training; `to_backend` / `from_backend` convert at the
boundaries (start, validation, saves).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from src.utils.errors import ConfigError

AXIS = "data"


def detected_cluster() -> Any | None:
    """The cluster environment JAX's own detection finds (SLURM, Open MPI, Cloud TPU, ...), or
    None. Uses the ClusterEnv list jax.distributed.initialize() consults; opt-in methods
    (mpi4py) only run when asked for, as in JAX."""
    from jax._src.clusters import ClusterEnv  # no public API lists the environments

    for env in ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return env
    return None


def detected_process_count() -> int:
    """Processes in the detected cluster; 1 if none."""
    env = detected_cluster()
    return 1 if env is None else int(env.get_process_count())


def initialize_distributed(cfg: Any) -> bool:
    """Runs jax.distributed.initialize() as the `parallel` config section asks; True if on.

    Must run before anything touches the devices. distributed=auto turns it on when a
    coordinator is given (parallel.coordinator_address or JAX_COORDINATOR_ADDRESS) or JAX
    detects a cluster of several processes (a one-task SLURM job stays single-process, so
    tests and notebooks run there too); unset values (""/0/-1) are left to JAX to detect.
    """
    if cfg.distributed == "false":
        return False
    if jax.distributed.is_initialized():  # e.g. by a launcher that imported us
        return True
    if cfg.distributed == "auto" and not (
        cfg.coordinator_address
        or os.environ.get("JAX_COORDINATOR_ADDRESS")
        or detected_process_count() > 1
    ):
        return False
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator_address or None,
        num_processes=cfg.num_processes or None,
        process_id=None if cfg.process_id < 0 else cfg.process_id,
    )
    return True


def select_devices(num_devices: int, batch_size: int) -> list[Any]:
    """num_devices per process (0 = all local ones) from every process, grouped by process.

    The global batch must split evenly over all of them; each process then feeds
    batch_size / process_count examples.
    """
    local = jax.local_devices()
    if num_devices > len(local):
        raise ConfigError(
            f"parallel.num_devices={num_devices} but only {len(local)} devices are available"
            + (" per process" if jax.process_count() > 1 else "")
        )
    per_process = num_devices or len(local)
    devices = [
        d
        for p in range(jax.process_count())
        for d in sorted(jax.local_devices(process_index=p), key=lambda d: d.id)[:per_process]
    ]
    if batch_size % len(devices):
        hosts = jax.process_count()
        where = f" ({per_process} per process x {hosts} processes)" if hosts > 1 else ""
        raise ConfigError(
            f"training.batch_size={batch_size} does not divide evenly over "
            f"{len(devices)} devices{where}; use a multiple of {len(devices)}"
        )
    return devices


def check_eval_batch(batch_size: int, mesh: Mesh) -> None:
    """Evaluation splits each eval.batch_size batch over the mesh: it must divide evenly."""
    if batch_size % mesh.size:
        raise ConfigError(
            f"eval.batch_size={batch_size} does not divide evenly over {mesh.size} devices; "
            f"use a multiple of {mesh.size}"
        )


def check_backend(backend: str) -> None:
    """pmap runs in one process only. The loop calls the step inside one compiled call
    (src/training/multistep.py), and a jax.pmap traced across processes takes each process's
    local rows, which a program over global arrays does not have."""
    if backend == "pmap" and jax.process_count() > 1:
        raise ConfigError(
            f"parallel.backend=pmap runs in one process only, not {jax.process_count()}; "
            "use jit or shard_map across processes (the same numbers)"
        )


def make_mesh(devices: list[Any]) -> Mesh:
    """A 1-D mesh named "data" over the given devices, in the given order."""
    return jax.make_mesh(
        (len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def split_on_devices(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh: a global batch, or a pmap-stacked state."""
    return NamedSharding(mesh, P(AXIS))


def to_backend(state: Any, mesh: Mesh, backend: str) -> Any:
    """Canonical (replicated) state -> the layout the backend's step takes.

    jit, shard_map: the canonical layout itself.
    pmap: every leaf x becomes [devices, *x.shape], one copy per device, split over the mesh
    (what jax.pmap expects).
    """
    if backend != "pmap":
        return jax.device_put(state, replicated(mesh))
    n = mesh.size
    stack = jax.jit(
        lambda t: jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), t),
        out_shardings=split_on_devices(mesh),
    )
    return stack(state)


def from_backend(state: Any, mesh: Mesh, backend: str) -> Any:
    """The backend's state layout -> canonical (replicated), e.g. to save or validate."""
    if backend != "pmap":
        return state
    first = jax.jit(lambda t: jax.tree.map(lambda x: x[0], t), out_shardings=replicated(mesh))
    return first(state)
