"""Orbax checkpoints of the full train state: model_last (latest steps) and model_best.

Two managers, because Orbax's best_fn with max_to_keep=1 would delete the latest step. Each
checkpoint holds the state pytree and a JSON item with the step's metadata. States are restored
onto an abstract target, so the device layout of the restoring process decides placement.

Crash safety: Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it when
complete, so a process killed mid-save leaves a temporary folder, never a half step. Managers are
created with cleanup_tmp_directories, which deletes such leftovers; a step folder that exists
but does not read back (truncated by hand or by a broken file system) is set aside as
`<step>.corrupt-<time>` when an older step restores.

Silent corruption: once a step's save has finished (at the next save or at wait()), the SHA-256
of every file in its folder goes to `<step>/checksums.json`; restore() checks them first, so a
step whose bytes changed is refused like an unreadable one (StorageError, exit 4, naming the
file). A step without checksums.json (a kill between the save and the checksums, or saved by an
older version) is restored unchecked.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from src.utils.errors import RunDirError, StorageError
from src.utils.io import atomic_write_json, read_json

CHECKSUMS = "checksums.json"


class CorruptStep(StorageError):
    """A saved step that fails its checksums or does not read back (exit 4)."""

    def __init__(self, folder: Path, reason: str):
        super().__init__(f"checkpoint {folder}: {reason}")
        self.reason = reason


# Managers with a save whose checksums are not written yet: id(manager) -> step.
_unsummed: dict[int, int] = {}


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
    quiet_storage_logs()
    try:
        return ocp.CheckpointManager(directory.absolute(), options=options)
    except OSError as e:
        raise StorageError(f"cannot use checkpoint folder {directory}: {e}") from e


class _StorageFailureLogs(logging.Filter):
    """Drops Orbax's error logs about a failed write (a page of traceback from each of its
    threads): the run reports the failure once, as a one-line StorageError. Also its warning
    about a step without _CHECKPOINT_METADATA, which a kill leaves and which restores."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            # A step whose save a kill cut short after its rename: it restores all the same.
            return not record.getMessage().startswith("Metadata file does not exist")
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and is_storage_failure(error):
            return False
        return not STORAGE_MESSAGES.search(record.getMessage())


def quiet_storage_logs() -> None:
    """Installs _StorageFailureLogs on the absl logger Orbax logs to (once), and an
    unraisablehook that drops the 'Event loop is closed' errors of TensorStore's callbacks
    (bare tracebacks, dozens per failed save) after Orbax closed the event loop of a failed
    write."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _StorageFailureLogs) for f in logger.filters):
        logger.addFilter(_StorageFailureLogs())
    if not getattr(sys.unraisablehook, "drops_closed_loop_errors", False):
        sys.unraisablehook = _dropping_closed_loop_errors(sys.unraisablehook)


def _dropping_closed_loop_errors(hook: Any) -> Any:
    def unraisablehook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        hook(unraisable)

    unraisablehook.drops_closed_loop_errors = True  # type: ignore[attr-defined]
    return unraisablehook


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an asynchronous save (it waits for the previous one); call wait() before exiting.

    The (replicated) state goes to Orbax as host numpy arrays (jax.device_get; on the CPU
    backend these are views of the device buffers, which then are not donated to the next
    step while the write runs): Orbax writes them from process 0 as it would the jax.Arrays,
    in the same format, with less host work per array (docs/performance.md, checkpoints).
    Orbax's own path also copies to the host before it returns, so the save blocks no longer.

    A failure to write (read-only or full disk) raises StorageError naming the folder; the
    state in memory is untouched and the previous complete step stays restorable.
    """
    wait(manager)  # Orbax would wait for the previous save too; its checksums are written here
    try:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(jax.device_get(saved_tree(state))),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
    except Exception as e:
        if not is_storage_failure(e):
            raise
        raise _storage_error(manager, step, e) from e
    _unsummed[id(manager)] = step


def wait(manager: ocp.CheckpointManager) -> None:
    """Blocks until pending saves are on disk, then writes the checksums of the step saved last;
    a failed background write raises StorageError."""
    try:
        manager.wait_until_finished()
    except Exception as e:
        _unsummed.pop(id(manager), None)
        if not is_storage_failure(e):
            raise
        raise _storage_error(manager, None, e) from e
    step = _unsummed.pop(id(manager), None)
    if step is not None and jax.process_index() == 0:
        folder = Path(manager.directory) / str(step)
        try:
            atomic_write_json(folder / CHECKSUMS, {"sha256": file_digests(folder)})
        except OSError as e:
            raise _storage_error(manager, step, e) from e


def poll(manager: ocp.CheckpointManager) -> None:
    """Writes the checksums of a save that has finished in the background, without waiting
    (the loop calls it at its boundaries, so a kill rarely finds a step without them).
    Single-process only: wait() may meet other processes at a barrier."""
    if (
        id(manager) in _unsummed
        and jax.process_count() == 1
        and not manager.is_saving_in_progress()
    ):
        wait(manager)


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under folder (but checksums.json), by path relative to it."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != CHECKSUMS and not path.name.endswith(".tmp"):
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            out[str(path.relative_to(folder))] = digest.hexdigest()
    return out


def verify(folder: Path) -> None:
    """Raises StorageError naming the first file of the step folder whose bytes differ from its
    checksums.json (or that is missing); a folder without checksums.json passes."""
    listed = folder / CHECKSUMS
    if not listed.is_file():
        return
    expected = read_json(listed)["sha256"]
    actual = file_digests(folder)
    for name, digest in expected.items():
        if actual.get(name) != digest:
            what = "is missing" if name not in actual else "does not match its checksum"
            raise CorruptStep(folder, f"{name} {what} (corrupted on disk)")


@contextlib.contextmanager
def _quiet_reads() -> Iterator[None]:
    """Silences the 'Exception ignored in <coroutine ...>' tracebacks that Orbax's abandoned read
    tasks print when a step does not read back (hundreds of lines per step)."""
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()  # the abandoned coroutines go now, while the hook is quiet
        sys.unraisablehook = previous


def _first_line(e: BaseException, limit: int = 120) -> str:
    """e's type and the start of its first line (TensorStore errors run to a page)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def close(manager: ocp.CheckpointManager) -> None:
    """Closes manager. Orbax's close waits for pending saves and raises a failed one again: a
    storage failure, which wait() has already raised, must not replace the run's own error."""
    try:
        manager.close()
    except Exception as e:
        if not is_storage_failure(e):
            raise


# The operating system's reasons for a failed write, as they read inside the messages of the
# exception types Orbax/TensorStore wrap them in.
OS_REASONS = re.compile(
    r"No space left on device|Read-only file system|Permission denied|Disk quota exceeded"
)
# ... and any message that carries an OS error code (TensorStore's form).
STORAGE_MESSAGES = re.compile(OS_REASONS.pattern + "|os_error_code")


def is_storage_failure(e: BaseException) -> bool:
    """An OSError anywhere in e's cause chain, or a wrapped one recognised by its message."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) or STORAGE_MESSAGES.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _storage_reason(e: BaseException) -> str:
    """The operating system's reason in e's cause chain (TensorStore's messages run to a page)."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        found = OS_REASONS.search(str(seen))
        if found:
            return found.group(0)
        seen = seen.__cause__ or seen.__context__
    return _first_line(e)


def _storage_error(manager: ocp.CheckpointManager, step: int | None, e: Exception) -> StorageError:
    newest = manager.latest_step()
    where = f"step {step} to " if step is not None else ""
    kept = f"step {newest}" if newest is not None else "none"
    reason = _storage_reason(e)
    return StorageError(
        f"cannot write checkpoint {where}{manager.directory}: {reason}; newest complete "
        f"checkpoint there: {kept}; free space or fix permissions, then --resume"
    )


def restore(
    manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """Restores (state, meta) at step (default: latest) onto abstract_state's shapes and shardings.

    A step whose files fail their checksums or do not read back raises StorageError (exit 4)
    with one line naming it.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise RunDirError(f"no complete checkpoint in {manager.directory}")
    folder = Path(manager.directory) / str(step)
    verify(folder)
    try:
        with _quiet_reads():
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(saved_tree(abstract_state)),
                    meta=ocp.args.JsonRestore(),
                ),
            )
    except Exception as e:
        raise CorruptStep(folder, f"does not read back: {_first_line(e)}") from e
    state = restored["state"]
    if hasattr(abstract_state, "_fields"):  # the NamedTuple that saved_tree took apart
        state = type(abstract_state)(**state)
    return state, restored["meta"]


def saved_tree(state: Any) -> Any:
    """What a checkpoint holds of state: a NamedTuple (the TrainState) as the mapping of its
    fields, less those that are None (an optional part that is off, e.g. the EMA), so adding such
    a part changes nothing on disk for the runs that do not use it and older runs still restore.
    """
    if not hasattr(state, "_fields"):
        return state
    return {k: v for k, v in state._asdict().items() if v is not None}


def restore_newest(
    manager: ocp.CheckpointManager, abstract_state: Any
) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest step that reads back intact; None when the folder holds no step.

    Newer steps that fail their checksums or to read while an older one succeeds are unusable
    (the same target restored the older one) and are renamed to `<step>.corrupt-<time>`, with
    one warning line each. If no step reads back, nothing is moved and a StorageError (exit 4)
    names the folder and the newest step's error in one line.
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
            reason = error.reason if isinstance(error, CorruptStep) else _first_line(error)
            print(
                f"warning: checkpoint {folder}: {reason}; moved to {aside.name}, resuming "
                f"from step {step}",
                file=sys.stderr,
            )
        if failed:
            manager.reload()
        return restored
    if failed:
        step, error = failed[0]
        reason = error.reason if isinstance(error, CorruptStep) else _first_line(error)
        raise StorageError(
            f"no checkpoint in {manager.directory} reads back ({len(failed)} tried); step "
            f"{step}: {reason}"
        )
    return None


def latest_meta(manager: ocp.CheckpointManager) -> dict[str, Any] | None:
    """The JSON meta item of the latest step, or None when there is none or it does not read."""
    step = manager.latest_step()
    if step is None:
        return None
    try:
        verify(Path(manager.directory) / str(step))
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
    folder = Path(manager.directory) / str(step)
    verify(folder)  # a corrupted step is named as such, not as a mismatch or a traceback
    try:
        with _quiet_reads():
            metadata = manager.item_metadata(step)["state"]
    except Exception as e:
        raise CorruptStep(folder, f"its metadata does not read back: {_first_line(e)}") from e
    saved = _leaf_specs(metadata)
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
