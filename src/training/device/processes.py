"""The processes of a run: the cluster they run on, jax.distributed, and which one writes.

Process 0 writes the run's own files: it prepares and locks the run folder and writes
metrics.json, TensorBoard, runs.csv, the profile and the checkpoints' checksums; Orbax saves
collectively from every process. The answer is needed twice, and both times it comes from here:
before jax.distributed starts, from the config and the cluster environment (process 0 prepares
the folder before it joins the others, so no process can touch it earlier):
`writes_before_start`; afterwards from JAX: `is_writer`. Both name the same process, because
jax.distributed.initialize takes its process id from the same config value or cluster
environment.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from src.utils.errors import ConfigError


def cluster_environments() -> list[Any]:
    """JAX's cluster environments (SLURM, Open MPI, Cloud TPU, ...), in the order
    jax.distributed.initialize() tries them.

    The one use of JAX's private API in src/ (no public function lists them): if a JAX release
    renames or reshapes ClusterEnv, tests/test_processes.py fails, naming what changed.
    """
    from jax._src.clusters import ClusterEnv

    return list(ClusterEnv._cluster_types)


def detected_cluster() -> Any | None:
    """The cluster environment JAX's own detection finds, or None. Opt-in methods (mpi4py) only
    run when asked for, as in JAX."""
    for env in cluster_environments():
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
    try:
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator_address or None,
            num_processes=cfg.num_processes or None,
            process_id=None if cfg.process_id < 0 else cfg.process_id,
        )
    except ValueError as e:  # what JAX could not detect and the config does not say
        raise ConfigError(
            f"parallel.distributed={cfg.distributed}: jax.distributed cannot start: {e} Set "
            "parallel.coordinator_address, parallel.num_processes and parallel.process_id, "
            "or launch under a cluster JAX detects (SLURM, ...)"
        ) from None
    return True


def writes_before_start(parallel: Any) -> bool:
    """Whether this process will be process 0, decided before jax.distributed starts: from
    parallel.process_id when set, else from the cluster environment (a single process when
    distributed is off or no cluster is found)."""
    if parallel.distributed == "false":
        return True
    if parallel.process_id >= 0:
        return bool(parallel.process_id == 0)
    env = detected_cluster()
    return env is None or bool(env.get_process_id() == 0)


def is_writer() -> bool:
    """Whether this process writes the run's files, once JAX knows the processes."""
    return jax.process_index() == 0
