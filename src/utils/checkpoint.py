"""Orbax checkpoints of the full train state: model_last (latest steps) and model_best.

Two managers, because Orbax's best_fn with max_to_keep=1 would delete the latest step. Each
checkpoint holds the state pytree and a JSON item with the step's metadata. States are restored
onto an abstract target, so the device layout of the restoring process decides placement.

Crash safety: Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it when
complete, so a process killed mid-save leaves a temporary folder, never a half step. Managers are
created with cleanup_tmp_directories, which deletes such leftovers; a step folder that exists
but does not read back (truncated by hand or by a broken file system) is set aside as
`<step>.corrupt-<time>` when an older step restores.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from src.utils.errors import RunDirError, StorageError


def make_manager(directory: Path, max_to_keep: int) -> ocp.CheckpointManager:
    """An async CheckpointManager that removes unfinished saves of earlier processes.

    For the training process only: a reader opening a folder that is being written would
    delete the writer's save in progress (readers use CheckpointManagerOptions(read_only=True)).
    Multi-host saves meet at barriers named after the step; the folder name prefixes them so
    model_last and model_best can save the same step at once.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=directory.name
        ),
    )
    try:
        return ocp.CheckpointManager(directory.absolute(), options=options)
    except OSError as e:
        raise StorageError(f"cannot use checkpoint folder {directory}: {e}") from e


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an asynchronous save (it waits for the previous one); call wait() before exiting.

    The (replicated) state goes to Orbax as host numpy arrays (jax.device_get; on the CPU
    backend these are views of the device buffers, which then are not donated to the next
    step while the write runs): Orbax writes them from process 0 as it would the jax.Arrays,
    in the same format, at about half the CPU cost per array (docs/performance.md,
    checkpoints). Orbax's own path also copies to the host before it returns, so the save
    blocks no longer than before.

    A failure to write (read-only or full disk) raises StorageError naming the folder; the
    state in memory is untouched and the previous complete step stays restorable.
    """
    try:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(jax.device_get(state)),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
    except Exception as e:
        if not is_storage_failure(e):
            raise
        raise _storage_error(manager, step, e) from e


def wait(manager: ocp.CheckpointManager) -> None:
    """Blocks until pending saves are on disk; a failed background write raises StorageError."""
    try:
        manager.wait_until_finished()
    except Exception as e:
        if not is_storage_failure(e):
            raise
        raise _storage_error(manager, None, e) from e


# How storage failures read when Orbax/TensorStore wrap them in other exception types.
STORAGE_MESSAGES = re.compile(
    r"No space left|Read-only file system|Permission denied|Disk quota|os_error_code"
)


def is_storage_failure(e: BaseException) -> bool:
    """An OSError anywhere in e's cause chain, or a wrapped one recognised by its message."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) or STORAGE_MESSAGES.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _storage_error(manager: ocp.CheckpointManager, step: int | None, e: Exception) -> StorageError:
    newest = manager.latest_step()
    where = f"step {step} to " if step is not None else ""
    kept = f"step {newest}" if newest is not None else "none"
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return StorageError(
        f"cannot write checkpoint {where}{manager.directory}: {reason}; newest complete "
        f"checkpoint there: {kept}; free space or fix permissions, then --resume"
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


def restore_newest(
    manager: ocp.CheckpointManager, abstract_state: Any
) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest step that reads back; None when the folder holds no step.

    Newer steps that fail to read while an older one succeeds are unusable (the same target
    restored the older one) and are renamed to `<step>.corrupt-<time>`. If no step reads back,
    nothing is moved and a RunDirError names the folder and the newest step's error.
    """
    failed: list[tuple[int, Exception]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = restore(manager, abstract_state, step)
            if int(restored[0].step) != step:
                raise ValueError(f"holds the state of step {int(restored[0].step)}")
        except Exception as e:  # any failure to read makes this step unusable
            failed.append((step, e))
            continue
        for bad, error in failed:
            folder = Path(manager.directory) / str(bad)
            aside = folder.with_name(f"{bad}.corrupt-{int(time.time())}")
            if jax.process_index() == 0:  # one host moves it; all of them skip it
                folder.rename(aside)
            print(
                f"warning: checkpoint {folder} does not read back ({type(error).__name__}); "
                f"moved to {aside.name}, resuming from step {step}",
                file=sys.stderr,
            )
        if failed:
            manager.reload()
        return restored
    if failed:
        step, error = failed[0]
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise RunDirError(
            f"no checkpoint in {manager.directory} reads back; step {step}: "
            f"{type(error).__name__}: {first_line}"
        )
    return None


def latest_meta(manager: ocp.CheckpointManager) -> dict[str, Any] | None:
    """The JSON meta item of the latest step, or None when there is none or it does not read."""
    step = manager.latest_step()
    if step is None:
        return None
    try:
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # an unreadable best checkpoint is replaced at the next improvement
        print(f"warning: cannot read {manager.directory}/{step}: {e}", file=sys.stderr)
        return None
    return dict(restored["meta"])


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs of tree's leaves, placed with sharding (an Orbax restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def open_manager(directory: Path) -> ocp.CheckpointManager:
    """A manager for reading an existing folder: creates, deletes and cleans up nothing, so a save
    in progress by a training process is left alone (and, unlike read_only=True, it logs nothing).
    """
    return ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        },
    )


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """'params/encoder/net/layers/0/kernel' -> (shape, dtype) for every array leaf."""

    def name(key: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
        for path, leaf in leaves
    }


def check_matches(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> None:
    """Raises RunDirError naming the first array whose name, shape or dtype differ between the
    checkpoint at step and abstract_state (the state the current config builds)."""
    saved = _leaf_specs(manager.item_metadata(step)["state"])
    expected = _leaf_specs(abstract_state)
    where = f"{manager.directory}/{step}"
    # The state's own order (step, params, opt_state): a model change is reported on params.
    for leaf in [*expected, *sorted(saved.keys() - expected.keys())]:
        if leaf not in expected:
            raise RunDirError(
                f"{where}: holds {leaf}, which the model in config.yaml does not have"
            )
        if leaf not in saved:
            raise RunDirError(f"{where}: has no {leaf}, which the state built from config.yaml has")
        if saved[leaf] != expected[leaf]:
            (s_shape, s_dtype), (e_shape, e_dtype) = saved[leaf], expected[leaf]
            raise RunDirError(
                f"{where}: {leaf} is {s_dtype}{list(s_shape)} in the checkpoint but "
                f"{e_dtype}{list(e_shape)} for config.yaml"
            )
