"""--resume, decided in one place: which config a resumed run continues with, whether there is
anything to resume, and the state, interval and best it continues from.

A run's files are checked to be its own first (src/training/run/identity.py): config.yaml must equal
the config recorded with its identity, metrics.json must be there beside the checkpoints, and a step
saved by another run is refused like a corrupted one. The record itself is cut back to the
restored step by the recorder (src/training/run/recorder.py: truncate, TensorBoard rebuilt), and the
open logging interval comes back from the checkpoint's meta (src/training/interval.py).
"""

from __future__ import annotations

from typing import Any

from src.training import interval as accum
from src.training.run import identity
from src.training.run.checkpoint import Checkpoints, abstract_like
from src.training.run.recorder import read_record
from src.training.run.rundir import RunPaths
from src.utils.config import changed_keys, load_config, load_saved_config
from src.utils.errors import ConfigError, RunDirError, StorageError

# Keys that may differ when resuming: they change how long the run is, where it runs (the
# checkpoint does not depend on the device count) or how fast, not what it computes.
RESUMABLE_OVERRIDES = {
    "training.epochs",
    "training.steps_per_call",
    "compile.cache_dir",
    "compile.min_compile_secs",
    "parallel.backend",
    "parallel.num_devices",
    "parallel.distributed",
    "parallel.coordinator_address",
    "parallel.num_processes",
    "parallel.process_id",
    "profile.enabled",
    "profile.start_step",
    "profile.num_steps",
}


def check_run_files(paths: RunPaths) -> identity.Identity:
    """The run's identity, once its config.yaml is known to be the one it trained with and its
    metrics.json is there if it has checkpoints. A legacy run (no identity) passes with a
    notice."""
    if not paths.config.is_file():
        raise RunDirError(f"--resume: no run to resume at {paths.run_dir} (no config.yaml)")
    steps = [p for p in paths.last.glob("*") if p.name.isdigit()] if paths.last.is_dir() else []
    if not steps:  # killed before its first save, maybe before its provenance.json
        raise no_checkpoint(paths)
    ident = identity.read(paths.run_dir)
    if ident.run is None:
        identity.legacy_notice(paths.run_dir, "taken as its own")
    identity.check_config(paths.run_dir, ident, RESUMABLE_OVERRIDES)
    if not paths.metrics.is_file():
        raise StorageError(
            f"--resume: {paths.metrics} is missing beside the checkpoints in {paths.last}; "
            "restore it from a copy of the run (resuming without it would lose the history), "
            "or start the run again with --overwrite"
        )
    return ident


def no_checkpoint(paths: RunPaths) -> RunDirError:
    return RunDirError(
        f"--resume: run {paths.run_dir.name} has no checkpoint in {paths.last} to "
        "continue from (it stopped before its first save); start it again with --overwrite"
    )


def resume_config(args: Any, overrides: list[str], paths: RunPaths) -> Any:
    """The config a resumed run continues with: its config.yaml, planned length possibly changed.

    --config/--model/--data and --config.* overrides may be repeated from the original command;
    anything they change other than RESUMABLE_OVERRIDES is refused. A new training.epochs is
    refused with a warmup_cosine schedule, whose decay horizon is the planned length: the steps
    already taken would belong to a different schedule than the one the record would claim.
    """
    saved = load_saved_config(paths.config)
    if args.config:
        requested = load_config(args.config, {"model": args.model, "data": args.data}, overrides)
    else:
        requested = load_saved_config(paths.config, overrides)
    changed = changed_keys(saved, requested)
    refused = {k: v for k, v in changed.items() if k not in RESUMABLE_OVERRIDES}
    if refused:
        shown = ", ".join(f"{k} (saved {a!r}, asked {b!r})" for k, (a, b) in refused.items())
        raise ConfigError(
            f"--resume: {shown} differ from {paths.config}; a resumed run keeps its saved config "
            f"and only {', '.join(sorted(RESUMABLE_OVERRIDES))} may change (drop --config to use "
            "the saved one)"
        )
    if "training.epochs" in changed and saved.optimizer.schedule != "constant":
        raise ConfigError(
            f"--resume: training.epochs cannot change with optimizer.schedule="
            f"{saved.optimizer.schedule}, whose decay horizon is the planned length; resume with "
            f"training.epochs={saved.training.epochs} or start a new run"
        )
    return requested


def completed_message(paths: RunPaths, cfg: Any) -> str | None:
    """The line --resume prints for a run that has completed and is not asked to go on.

    A completed run is resumed only to train longer (a raised training.epochs); otherwise its
    record is left alone: no runs.csv rows, no new TensorBoard events, metrics.json as it is.
    """
    if not paths.metrics.is_file():
        return None
    record = read_record(paths.metrics)
    epochs = load_saved_config(paths.config).training.epochs
    if record.get("status") != "completed" or cfg.training.epochs != epochs:
        return None
    best = record.get("best")
    shown = (
        f"best val {best['metric']}={best['value']:.4f} at step {best['step']}; " if best else ""
    )
    return (
        f"run {paths.run_dir.name}: already completed ({record.get('total_steps')} steps, "
        f"{epochs} epochs); {shown}nothing to resume, record unchanged in {paths.run_dir} "
        f"(to train longer: --resume --config.training.epochs=N with N > {epochs})"
    )


def restore_run(
    cfg: Any, paths: RunPaths, initial: Any, total_steps: int, sharding: Any, ckpts: Checkpoints
) -> tuple[Any, accum.Interval, dict[str, Any] | None]:
    """The newest model_last state of this run that reads back, its open logging interval, and
    the meta of model_best (None without one). initial: a state of the run's shapes."""
    restored = ckpts.restore_last(abstract_like(initial, sharding))
    if restored is None:
        raise no_checkpoint(paths)
    state, meta = restored
    if int(state.step) > total_steps:
        raise ConfigError(
            f"training.epochs={cfg.training.epochs} plans {total_steps} steps but run "
            f"{paths.run_dir.name} has already done {int(state.step)}"
        )
    interval = accum.from_json(meta.get("train_interval"), sharding)
    # The best checkpoint on disk is the truth: it may be ahead of the restored step when a
    # run died between the two saves; a bit-exact replay reaches the same value again.
    return state, interval, ckpts.best_meta()
