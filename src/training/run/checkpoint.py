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
import dataclasses
import gc
import hashlib
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import jax
import orbax.checkpoint as ocp

from src.training.device.processes import is_writer
from src.utils.errors import RunDirError, StorageError
from src.utils.io import atomic_write_json, read_json

CHECKSUMS = "checksums.json"
# How much of an error's first line a one-line message quotes.
FIRST_LINE_CHARS = 120
# The run identity a step was saved by, in its checksums.json and its meta item.
RUN_KEY = "run"


class CorruptStep(StorageError):
    """A saved step that fails its checksums or does not read back (exit 4)."""

    def __init__(self, folder: Path, reason: str):
        super().__init__(f"checkpoint {folder}: {reason}")
        self.reason = reason


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
    """Installs _StorageFailureLogs on the absl logger Orbax logs to (once)."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _StorageFailureLogs) for f in logger.filters):
        logger.addFilter(_StorageFailureLogs())


@contextlib.contextmanager
def dropping_closed_loop_errors() -> Iterator[None]:
    """For its duration, an unraisablehook that drops the 'Event loop is closed' errors of
    TensorStore's callbacks (bare tracebacks, dozens per failed save) after Orbax closed the
    event loop of a failed write; the previous hook comes back at the end (collect the failed
    save's garbage before)."""
    previous = sys.unraisablehook

    def unraisablehook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    sys.unraisablehook = unraisablehook
    try:
        yield
    finally:
        sys.unraisablehook = previous


class Folder:
    """One Orbax manager over a checkpoint folder (model_last or model_best) for the process that
    writes the run, and the step whose checksums are due once its save has finished.

    run: the run identity written into every step's checksums.json and meta (None: a legacy run,
    whose steps carry none).
    """

    def __init__(self, directory: Path, max_to_keep: int, run: str | None = None):
        self.manager = make_manager(directory, max_to_keep)
        self.run = run
        self.unsummed: int | None = None  # a step saved but without checksums.json yet
        self.failed = False  # a save failed (its callbacks' errors are collected at close)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts an asynchronous save (it waits for the previous one); call wait() before exiting.

        The (replicated) state goes to Orbax as host numpy arrays (jax.device_get; on the CPU
        backend these are views of the device buffers, which then are not donated to the next
        step while the write runs): Orbax writes them from process 0 as it would the jax.Arrays,
        in the same format, with less host work per array (docs/performance.md, checkpoints).
        Orbax's own path also copies to the host before it returns, so the save blocks no longer.

        A failure to write (read-only or full disk) raises StorageError naming the folder; the
        state in memory is untouched and the previous complete step stays restorable.
        """
        self.wait()  # Orbax would wait for the previous save too; its checksums are written here
        if self.run is not None:
            meta = {**meta, RUN_KEY: self.run}
        try:
            self.manager.save(
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
            self.failed = True
            raise _storage_error(self.manager, step, e) from e
        self.unsummed = step

    def wait(self) -> None:
        """Blocks until pending saves are on disk, then writes the checksums (and the run
        identity) of the step saved last; a failed background write raises StorageError."""
        step, self.unsummed = self.unsummed, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            if not is_storage_failure(e):
                raise
            self.failed = True
            raise _storage_error(self.manager, None, e) from e
        if step is not None and is_writer():
            folder = Path(self.manager.directory) / str(step)
            sums: dict[str, Any] = {"sha256": file_digests(folder)}
            if self.run is not None:
                sums[RUN_KEY] = self.run
            try:
                atomic_write_json(folder / CHECKSUMS, sums)
            except OSError as e:
                raise _storage_error(self.manager, step, e) from e

    def poll(self) -> None:
        """Writes the checksums of a save that has finished in the background, without waiting
        (the loop calls it at its boundaries, so a kill rarely finds a step without them).
        Single-process only: wait() may meet other processes at a barrier."""
        if (
            self.unsummed is not None
            and jax.process_count() == 1
            and not self.manager.is_saving_in_progress()
        ):
            self.wait()

    def close(self) -> None:
        close(self.manager)


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


@dataclasses.dataclass(frozen=True)
class Owner:
    """Which run's steps a folder may hold: the run identity in provenance.json (src/training/run/identity.py).

    run None: nothing is checked (a run made before run identities existed, read without
    one). legacy: the run was made by an older version and adopted an identity later, so its
    steps saved before then carry none and are accepted; a step naming another run never is.
    """

    run: str | None = None
    legacy: bool = False

    def check(self, folder: Path, found: Any) -> None:
        """Raises CorruptStep if the step in folder, saved by run `found`, is not this run's."""
        if self.run is None or found == self.run or (found is None and self.legacy):
            return
        by = f"run identity {found}" if found is not None else "no run identity"
        raise CorruptStep(
            folder, f"was saved with {by}, not this run's {self.run} (copied from another run?)"
        )


UNCHECKED = Owner()


def verify(folder: Path, owner: Owner = UNCHECKED) -> None:
    """Raises StorageError naming the first file of the step folder whose bytes differ from its
    checksums.json (or that is missing), or a step that checksums.json says belongs to another
    run than owner; a folder without checksums.json passes."""
    listed = folder / CHECKSUMS
    if not listed.is_file():
        return
    try:
        sums = read_json(listed)
    except OSError as e:
        raise CorruptStep(folder, f"{CHECKSUMS} does not read: {e.strerror or e}") from None
    except StorageError:
        raise CorruptStep(folder, f"{CHECKSUMS} is not valid JSON") from None
    if not isinstance(sums, dict) or not isinstance(sums.get("sha256"), dict):
        raise CorruptStep(folder, f"{CHECKSUMS} is not an object with sha256 digests")
    owner.check(folder, sums.get(RUN_KEY))
    expected = sums["sha256"]
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


def _first_line(e: BaseException) -> str:
    """e's type and the start of its first line (TensorStore errors run to a page)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text if len(text) <= FIRST_LINE_CHARS else text[:FIRST_LINE_CHARS] + "..."
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


def newest_on_disk(directory: Path) -> int | None:
    """The highest numbered step folder (a symlink to one included) with its commit marker."""
    try:
        found = [
            int(p.name)
            for p in directory.iterdir()
            if p.name.isdigit() and (p / "commit_success.txt").is_file()
        ]
    except OSError:
        return None
    return max(found, default=None)


def _storage_error(manager: ocp.CheckpointManager, step: int | None, e: Exception) -> StorageError:
    newest = manager.latest_step()
    if newest is None:  # Orbax lists no step it cannot stat as its own (a symlinked folder)
        newest = newest_on_disk(Path(manager.directory))
    where = f"step {step} to " if step is not None else ""
    kept = f"step {newest}" if newest is not None else "none"
    reason = _storage_reason(e)
    return StorageError(
        f"cannot write checkpoint {where}{manager.directory}: {reason}; newest complete "
        f"checkpoint there: {kept}; free space or fix permissions, then --resume"
    )


def restore(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    step: int | None = None,
    owner: Owner = UNCHECKED,
) -> tuple[Any, dict[str, Any]]:
    """Restores (state, meta) at step (default: latest) onto abstract_state's shapes and shardings.

    A step whose files fail their checksums, do not read back or belong to another run than
    owner raises StorageError (exit 4) with one line naming it.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise RunDirError(f"no complete checkpoint in {manager.directory}")
    folder = Path(manager.directory) / str(step)
    verify(folder, owner)
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
    meta = restored["meta"]
    owner.check(folder, meta.get(RUN_KEY) if isinstance(meta, dict) else None)
    state = restored["state"]
    if hasattr(abstract_state, "_fields"):  # the NamedTuple that saved_tree took apart
        state = type(abstract_state)(**state)
    return state, meta


def saved_tree(state: Any) -> Any:
    """What a checkpoint holds of state: a NamedTuple (the TrainState) as the mapping of its
    fields, less those that are None (an optional part that is off, e.g. the EMA), so adding such
    a part changes nothing on disk for the runs that do not use it and older runs still restore.
    """
    if not hasattr(state, "_fields"):
        return state
    return {k: v for k, v in state._asdict().items() if v is not None}


def restore_newest(
    manager: ocp.CheckpointManager, abstract_state: Any, owner: Owner = UNCHECKED
) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest step that reads back intact; None when the folder holds no step.

    Newer steps that fail their checksums or to read while an older one succeeds are unusable
    (the same target restored the older one) and are renamed to `<step>.corrupt-<time>`, with
    one warning line each. If no step reads back, nothing is moved and a StorageError (exit 4)
    names the folder and the newest step's error in one line.
    """
    failed: list[tuple[int, Exception]] = []
    steps = sorted(manager.all_steps(), reverse=True)
    if steps:  # a state of other shapes than this code builds is not a corrupted step
        # An unusable step is found again below, with the other reasons a step is unusable.
        with (
            contextlib.suppress(CorruptStep, OSError),
            open_manager(Path(manager.directory)) as reader,
        ):  # a reader's manager knows the items' handlers, hence their metadata
            check_matches(reader, steps[0], abstract_state, owner)
    for step in steps:
        try:
            restored = restore(manager, abstract_state, step, owner)
            if int(restored[0].step) != step:
                raise ValueError(f"holds the state of step {int(restored[0].step)}")
        except Exception as e:  # any failure to read makes this step unusable
            if _permission_denied(e):  # a fault of access, not of the step: nothing moves
                raise StorageError(
                    f"cannot read checkpoint {Path(manager.directory) / str(step)}: permission "
                    "denied; fix its permissions, then --resume"
                ) from e
            failed.append((step, e))
            continue
        for bad, error in failed:
            folder = Path(manager.directory) / str(bad)
            aside = folder.with_name(f"{bad}.corrupt-{int(time.time())}")
            if is_writer():  # one host moves it; all of them skip it
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


def _permission_denied(e: BaseException) -> bool:
    """A PermissionError anywhere in e's cause chain (or its message, as TensorStore words it)."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, PermissionError) or "Permission denied" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def latest_meta(manager: ocp.CheckpointManager, owner: Owner = UNCHECKED) -> dict[str, Any] | None:
    """The JSON meta item of the latest step, or None when there is none, it does not read or
    it is another run's."""
    step = manager.latest_step()
    if step is None:
        return None
    folder = Path(manager.directory) / str(step)
    try:
        verify(folder, owner)
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = dict(restored["meta"])
        owner.check(folder, meta.get(RUN_KEY))
    except Exception as e:  # an unreadable best checkpoint is replaced at the next improvement
        print(f"warning: cannot read {folder}: {_first_line(e)}", file=sys.stderr)
        return None
    return meta


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


def check_matches(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any, owner: Owner = UNCHECKED
) -> None:
    """Raises RunDirError naming the first array whose name, shape or dtype differ between the
    checkpoint at step and abstract_state (the state the current config builds)."""
    folder = Path(manager.directory) / str(step)
    verify(folder, owner)  # a corrupted step is named as such, not as a mismatch or a traceback
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


class Record(Protocol):
    """What Checkpoints needs of the run record (src/training/run/recorder.py:Recorder)."""

    def set_best(self, step: int, metric: str, value: float) -> None: ...

    def save(self) -> None: ...


class Checkpoints:
    """model_last and model_best of one run, owned by the process that writes it: saves, their
    checksums and run identity, the best state held until the next save, its confirmation in
    the record once on disk, restores and closing. A context: it closes both folders, and the
    closed-event-loop errors of failed saves are dropped only while it is open.

    The best state found by a validation is held (a device copy) and written with the next
    model_last save (one model_best save per checkpoint interval at most); the record names it
    as the best only once its save is known to be on disk, so it never claims a best
    checkpoint that a full disk lost.
    """

    def __init__(self, last: Path, best: Path, keep_last: int, best_metric: str, owner: Owner):
        self.owner = owner
        self.best_metric = best_metric
        self._hook: contextlib.AbstractContextManager[None] | None = dropping_closed_loop_errors()
        self._hook.__enter__()
        self._open: list[Folder] = []
        try:
            self.last = Folder(last, keep_last, owner.run)
            self._open.append(self.last)
            self.best = Folder(best, 1, owner.run)
            self._open.append(self.best)
        except BaseException:
            self.close()
            raise
        self.pending_best: tuple[int, Any, dict[str, Any]] | None = None
        self.unconfirmed_best: tuple[int, float] | None = None

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def restore_last(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """The newest model_last step of this run that reads back (restore_newest)."""
        return restore_newest(self.last.manager, abstract_state, self.owner)

    def best_meta(self) -> dict[str, Any] | None:
        """The meta of model_best's step (its step and validation metrics), if it reads back."""
        return latest_meta(self.best.manager, self.owner)

    def check_writable(self) -> None:
        """Writes and removes a file in each folder: a folder the run could not save into is
        found before training starts (and before --overwrite deletes anything)."""
        for folder in (self.last, self.best):
            directory = Path(folder.manager.directory)
            try:
                fd, name = tempfile.mkstemp(dir=directory, prefix=".write-check-")
                os.close(fd)
                os.unlink(name)
            except OSError as e:
                raise StorageError(
                    f"cannot write checkpoints in {directory}: {e.strerror or e}; free space or "
                    "fix permissions"
                ) from e

    def hold_best(self, step: int, state: Any, metrics: dict[str, Any]) -> None:
        """Holds the best state validated at step (a copy the next step does not donate)."""
        self.pending_best = (step, state, metrics)

    def save(self, step: int, state: Any, meta: dict[str, Any], record: Record) -> None:
        """model_best if a better state is held, record.save() (metrics.json, which is never
        older than model_last: a resume relies on it), then model_last at step (unless saved)."""
        self._save_best(record)
        record.save()
        if self.last.manager.latest_step() != step:
            self.last.save(step, state, meta)

    def _save_best(self, record: Record) -> None:
        if self.pending_best is None:
            return
        step, state, metrics = self.pending_best
        self.confirm_best(record)  # the save below would wait for the previous one anyway
        if step in self.best.manager.all_steps():  # left by a run that died ahead of model_last
            self.best.manager.delete(step)
        self.best.save(step, state, {"step": step, "val": metrics})
        self.unconfirmed_best = (step, metrics[self.best_metric])
        self.pending_best = None

    def confirm_best(self, record: Record) -> None:
        """Waits for the model_best save in flight, then names it as the best in the record."""
        if self.unconfirmed_best is not None:
            self.best.wait()
            step, value = self.unconfirmed_best
            record.set_best(step, self.best_metric, value)
            self.unconfirmed_best = None

    def poll(self) -> None:
        """Checksums of the saves that have finished meanwhile (see Folder.poll)."""
        self.last.poll()
        self.best.poll()

    def finish(self, record: Record) -> None:
        """Waits for both folders' saves and confirms the best."""
        self.last.wait()
        self.best.wait()
        self.confirm_best(record)

    def wait_quietly(self, error: BaseException) -> None:
        """Waits for the saves already started, adding a failure to error's notes (a failing
        disk must not hide the run's own error)."""
        for folder in (self.last, self.best):
            try:
                folder.wait()
            except Exception as wait_error:
                error.add_note(f"while waiting for checkpoints: {wait_error}")

    def close(self) -> None:
        """Closes both folders (waiting for their saves) and restores the unraisablehook."""
        failed = any(folder.failed for folder in self._open)
        try:
            while self._open:
                self._open.pop().close()
        finally:
            if failed:
                gc.collect()  # a failed save's callbacks go now, while the hook drops their errors
            if self._hook is not None:
                self._hook.__exit__(None, None, None)
                self._hook = None
