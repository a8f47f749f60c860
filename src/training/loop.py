"""train_and_evaluate(cfg, paths): the training loop, read top to bottom.

Sections: set-up, checkpoints, run record, loop, end. What the loop changes as it runs is one
`Progress`; the periodic actions (write a train record, validate, save) are plain functions of
it and of the fixed parts of the run (`Run`), called from the loop body.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from src.training import interval as accum
from src.training.device.parallel import (
    from_backend,
    replicated,
    split_on_devices,
    to_backend,
)
from src.training.device.processes import initialize_distributed, is_writer
from src.training.kl import kl_weight_from_config
from src.training.multistep import make_multi_step, steps_until_boundary
from src.training.resume import restore_run
from src.training.run import checkpoint, identity, provenance, run_index
from src.training.run.console import Console, start_console
from src.training.run.profiling import StepProfiler
from src.training.run.recorder import Recorder, is_better
from src.training.run.rundir import RunPaths
from src.training.run.signals import StopRequest
from src.training.setup import Setup, setup
from src.training.state import TrainState, eval_params, param_bytes, param_count
from src.training.step import Objective
from src.training.validation import evaluate_split
from src.utils.config import config_hash


class TrainRecord(NamedTuple):
    """A closed logging interval whose train record is not written yet."""

    step: int
    sums: dict[str, jax.Array]  # per-metric sums over the interval, on the device
    steps: int
    seconds: float


@dataclasses.dataclass
class Progress:
    """What the loop changes as it runs; everything else is fixed at set-up."""

    step: int  # steps dispatched (the device may still be computing the latest call)
    state: Any  # the TrainState, in parallel.backend's layout
    interval: accum.Interval  # the open logging interval
    best: float | None  # best validation value so far
    tic: float = 0.0  # perf_counter() when the open interval's timer (re)started
    last: dict[str, jax.Array] | None = None  # loss and grad_norm of the latest step
    # A divergence without a non-finite step (nan_policy skip: too many skipped steps; a
    # non-finite validation): the failure, which ends the loop at the next boundary.
    diverged: dict[str, Any] | None = None
    # The train record of the latest logging boundary, held back until the next call has been
    # dispatched, so that the host writes it while the device computes (see end_interval).
    unlogged: TrainRecord | None = None

    def elapsed(self) -> float:
        """Seconds of training in the open logging interval so far."""
        return self.interval.seconds + time.perf_counter() - self.tic


@dataclasses.dataclass(frozen=True)
class Run:
    """The fixed parts of a run that the loop's actions use."""

    cfg: Any
    parts: Setup
    recorder: Recorder
    console: Console
    checkpoints: checkpoint.Checkpoints

    def canonical(self, state: Any) -> TrainState:
        """state in the canonical layout (replicated over the mesh): saved and validated."""
        return from_backend(state, self.parts.mesh, self.cfg.parallel.backend)


def train_and_evaluate(
    cfg: Any, paths: RunPaths, resume: bool, on_start: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Trains cfg's model, validating and checkpointing as configured; returns metrics.json.

    on_start is called once every check has passed and every file the run writes before its
    first step has been written once, just before the first step (cli.py deletes the run an
    --overwrite replaces there).
    """
    initialize_distributed(cfg.parallel)  # multi-host: before anything touches the devices
    writer = is_writer()  # process 0 writes the run's files

    # --- Set-up: keys, data, devices, model and optimizer, steps (src/training/setup.py). A
    # resumed run reads the data files it was created with, and checks they are unchanged.
    recorded = identity.recorded_data(paths.run_dir) if resume else None
    parts = setup(identity.pinned_data(cfg, recorded))
    identity.check_data(paths.run_dir, recorded, parts.splits.info)
    total_steps = parts.total_steps

    # --- Checkpoints: model_last (latest steps) and model_best (best validation metric), bound
    # to the run's identity (provenance.json).
    ident = identity.for_run(cfg, paths.run_dir, resume, writer)
    owner = checkpoint.Owner(ident.run, ident.legacy)
    with checkpoint.Checkpoints(
        paths.last, paths.best, cfg.checkpoint.keep_last, cfg.checkpoint.best_metric, owner
    ) as ckpts:
        state, interval, best_meta = parts.state, accum.EMPTY, None
        if resume:
            state, interval, best_meta = restore_run(
                cfg, paths, parts.state, total_steps, replicated(parts.mesh), ckpts
            )

        # --- Run record (written only once the checkpoints are known to be usable).
        recorder, console, best = open_record(
            cfg, paths, parts, state, best_meta, resume, writer, ident
        )
        run = Run(cfg, parts, recorder, console, ckpts)
        try:
            return run_loop(run, paths, state, interval, best, on_start, writer)
        finally:
            recorder.close_tensorboard()


def run_loop(
    run: Run,
    paths: RunPaths,
    state: TrainState,
    interval: accum.Interval,
    best: float | None,
    on_start: Callable[[], None] | None,
    writer: bool,
) -> dict[str, Any]:
    """The loop from state to the end of the run; returns metrics.json's content."""
    cfg, parts, recorder, ckpts = run.cfg, run.parts, run.recorder, run.checkpoints
    tcfg, total_steps = cfg.training, parts.total_steps
    # --- Loop: no host work per step beyond dispatch; results are read at boundaries only.
    # training.steps_per_call: K steps per call between log/eval/checkpoint boundaries.
    run_steps = make_multi_step(parts.train_step, tcfg.nan_policy, tcfg.batch_size, parts.mesh)
    boundaries = (cfg.logging.every_steps, cfg.eval.every_steps, cfg.checkpoint.every_steps)
    p = Progress(
        int(state.step), to_backend(state, parts.mesh, cfg.parallel.backend), interval, best
    )
    profiler = StepProfiler(cfg.profile, paths.log_dir, writer)  # profile.*: a trace of steps
    recorder.update(status="running")
    # Every file the run writes before its first step is written once before on_start (an
    # --overwrite'n run is deleted there): metrics.json and TensorBoard (config.yaml,
    # provenance.json are already), a file in each checkpoint folder, runs.csv.
    if writer:
        recorder.save()
        ckpts.check_writable()
        run_index.check_writable(paths.run_dir)
    if on_start is not None:
        on_start()
    started_at = run_index.record_start(paths.run_dir, recorder.data, write=writer)
    p.tic = time.perf_counter()
    failure: dict[str, Any] | None = None
    try:
        with StopRequest() as stop:
            while p.step < total_steps and stop.signum is None and p.diverged is None:
                n = tcfg.steps_per_call
                n = n if steps_until_boundary(p.step, boundaries, total_steps) >= n else 1
                previous = p.last
                profiler.before(p.step)
                batch = parts.batches.chunk(p.step, n)
                p.state, sums, p.last = run_steps(
                    p.state, p.interval.sums, p.last, batch, parts.keys["train"], p.step
                )
                write_held_back(run, p)  # while the device computes
                p.interval = accum.Interval(sums, p.interval.steps + n, p.interval.seconds)
                p.step += n
                profiler.after(p.step, p.last)
                # The host may run one call ahead of the device, not more: bounded memory,
                # and the device never waits for the host.
                jax.block_until_ready(previous)
                if not any(p.step % e == 0 for e in boundaries) and p.step != total_steps:
                    continue
                ckpts.poll()  # checksums of saves finished meanwhile
                failure = check_stop(run, p)
                if failure is not None:
                    break
                evaluate = due(cfg.eval.every_steps, p.step, total_steps)
                save_now = due(cfg.checkpoint.every_steps, p.step, total_steps)
                if due(cfg.logging.every_steps, p.step, total_steps):
                    end_interval(run, p, write_now=evaluate or save_now)
                if evaluate:
                    untimed(run, p, validate)
                if save_now:
                    untimed(run, p, save)

            # --- End: stopped by a signal, a failure or a divergence, or completed.
            write_held_back(run, p)  # stopped by a signal right after a logging boundary
            if failure is None:  # stopped by a signal between boundaries, or diverged
                failure = check_stop(run, p) or p.diverged
            if stop.signum is not None or failure is not None:
                save(run, p)
            ckpts.finish(recorder)
        if failure is not None:
            recorder.update(status="failed", stopped_at_step=p.step, failure=failure)
        elif stop.signum is not None and p.step < total_steps:
            recorder.update(status="interrupted", stopped_at_step=p.step, signal=stop.name)
        else:
            recorder.update(status="completed")
    except BaseException as e:
        record_error(run, p, e)
        raise
    finally:
        try:
            run_index.record_end(paths.run_dir, recorder.data, started_at, write=writer)
            parts.batches.close()
            recorder.close()
            profiler.close(p.last)
        finally:
            ckpts.close()
    return recorder.data


# --- Set-up of the run record.


def open_record(
    cfg: Any,
    paths: RunPaths,
    parts: Setup,
    state: TrainState,
    best_meta: dict[str, Any] | None,
    resume: bool,
    writer: bool,
    ident: identity.Identity,
) -> tuple[Recorder, Console, float | None]:
    """Opens the run record at state.step: metrics.json and TensorBoard (a resumed history is cut
    back to that step), config.yaml, provenance.json, and the console's header and parameter
    table. Returns the recorder, the console and the best validation value so far."""
    tcfg, first = cfg.training, int(state.step)
    header = {
        "run_id": paths.run_dir.name,
        "experiment": cfg.experiment.name,
        "config_hash": config_hash(cfg),
        "param_count": param_count(state.params),
        "model_bytes": param_bytes(state.params),
        "total_steps": parts.total_steps,
        "train_bound": Objective.from_config(tcfg).describe(),
    }
    console = Console(
        cfg.logging.console and writer,
        total_steps=parts.total_steps,
        steps_per_epoch=parts.steps_per_epoch,
        epochs=tcfg.epochs,
        start_step=first,
    )
    recorder = Recorder(
        paths.metrics,
        paths.log_dir,
        header,
        tensorboard=cfg.logging.tensorboard,
        console=console,
        write=writer,
        resume=resume,
        write_every_secs=cfg.logging.record_every_secs,
    )
    recorder.truncate(first)
    recorder.update(best=None, skipped_steps=total_skipped(recorder.data["history"]))
    best = None
    if best_meta is not None:
        best = best_meta["val"][cfg.checkpoint.best_metric]
        recorder.set_best(best_meta["step"], cfg.checkpoint.best_metric, best)
    if writer:  # a new run records its data; a resumed one keeps the record it has
        data_info = None if resume else {**parts.splits.info, "on_device": parts.batches.on_device}
        provenance.write(paths.config, paths.provenance, cfg, ident, data_info, first)
    recorder.tensorboard(0, "model", {k: header[k] for k in ("param_count", "model_bytes")})
    # The header, and the parameter table (also in <log_dir>/params.txt); the fields that
    # seldom change are shown here and on a line only when they do.
    shown = {"kl_weight": float(kl_weight_from_config(tcfg.kl, first))}
    shown |= {"lr": float(parts.schedule(first)), "skipped_steps": recorder.data["skipped_steps"]}
    start_console(
        console,
        cfg,
        paths,
        list(parts.mesh.devices.flat),
        parts.splits.info,
        header,
        state.params,
        shown=shown,
        write=writer,
    )
    return recorder, console, best


# --- The loop's actions.


def due(every: int, step: int, total_steps: int) -> bool:
    """Whether an action done every `every` steps (and at the end) falls on step."""
    return step % every == 0 or step == total_steps


def end_interval(run: Run, p: Progress, write_now: bool) -> None:
    """Closes the logging interval at p.step. Its train record is held back (p.unlogged) and
    written after the next call is dispatched, or now where a validation, a save or the end
    follows, which must come after it."""
    sums = p.interval.sums
    assert sums is not None  # a step has run
    jax.block_until_ready(sums)  # the interval's time ends with its last step
    p.unlogged = TrainRecord(p.step, sums, p.interval.steps, p.elapsed())
    run.console.interval_end()
    # The next interval's time starts here: it includes this logging, not validation or
    # checkpoint saves.
    p.tic = time.perf_counter()
    p.interval = accum.EMPTY
    if write_now:
        write_held_back(run, p)


def write_held_back(run: Run, p: Progress) -> None:
    """Writes the held-back train record, if any."""
    if p.unlogged is not None:
        write_train_record(run, p, p.unlogged)
        p.unlogged = None


def write_train_record(run: Run, p: Progress, record: TrainRecord) -> None:
    """Writes a train record (metrics.json, TensorBoard, console). nan_policy skip: more than
    training.max_skipped_fraction of the steps so far skipped is a divergence, not noise.
    """
    tcfg = run.cfg.training
    means = accum.means(jax.device_get(record.sums), record.steps)
    means["lr"] = float(run.parts.schedule(record.step - 1))
    means["examples_per_sec"] = record.steps * tcfg.batch_size / record.seconds
    run.recorder.log(record.step, "train", {k: _scalar(v) for k, v in means.items()})
    skipped = run.recorder.data["skipped_steps"] + means["skipped_steps"]
    run.recorder.update(skipped_steps=skipped)
    if skipped > tcfg.max_skipped_fraction * record.step and p.diverged is None:
        p.diverged = {
            "step": record.step,
            "reason": f"{skipped} of {record.step} steps skipped ({skip_causes(tcfg)}), "
            f"more than training.max_skipped_fraction={tcfg.max_skipped_fraction}",
        }


def validate(run: Run, p: Progress) -> None:
    """Validates p.state on the val split, records it, and holds an improved state for
    model_best; a non-finite validation is a divergence."""
    cfg, parts = run.cfg, run.parts
    canonical = run.canonical(p.state)
    metrics = evaluate_split(
        parts.eval_step,
        eval_params(canonical, cfg.eval.use_ema),
        parts.splits.val,
        cfg.eval.batch_size,
        parts.keys["eval"],
        cfg.eval.active_threshold,
        split_on_devices(parts.mesh),
        groups=parts.latent_groups,
        kl_mass_share=cfg.eval.kl_mass_share,
    )
    run.recorder.log(p.step, "val", metrics)
    value = metrics[cfg.checkpoint.best_metric]
    bad = [k for k in dict.fromkeys(("elbo", cfg.checkpoint.best_metric)) if k in metrics]
    bad = [k for k in bad if not np.isfinite(metrics[k])]
    if bad and p.diverged is None:
        p.diverged = {"step": p.step, "reason": "non-finite validation " + " and ".join(bad)}
    if is_better(value, p.best, cfg.checkpoint.best_mode):
        p.best = value
        # A copy: the next step donates the state.
        run.checkpoints.hold_best(p.step, copy_tree(canonical), metrics)


def save(run: Run, p: Progress) -> None:
    """model_best if a better state was validated, metrics.json, then model_last at p.step with
    the open logging interval (Checkpoints.save)."""
    meta = {"step": p.step, "train_interval": accum.to_json(p.interval, p.elapsed())}
    run.checkpoints.save(p.step, run.canonical(p.state), meta, run.recorder)


def check_stop(run: Run, p: Progress) -> dict[str, Any] | None:
    """nan_policy stop: the failure, if a step since the last check was non-finite.

    Such a step left state.step behind and made the later steps no-ops (multistep.py); rewinds
    p.step and the interval to the last good step. Waits for the steps to finish.
    """
    if run.cfg.training.nan_policy != "stop":
        return None
    applied = applied_steps(p.state)
    if applied == p.step:
        return None
    p.interval = p.interval._replace(steps=p.interval.steps - (p.step - applied))
    p.step = applied
    assert p.last is not None  # a step has run
    return nonfinite_failure(p.step + 1, p.last)


def untimed(run: Run, p: Progress, action: Callable[[Run, Progress], None]) -> None:
    """Runs action without counting its time in the interval's examples_per_sec."""
    started = time.perf_counter()
    with run.console.untimed():  # nor its compilation in the console's
        action(run, p)
    p.tic += time.perf_counter() - started


def record_error(run: Run, p: Progress, e: BaseException) -> None:
    """Records the exception e that ends the run as its failure. Waits for the saves already
    started and writes the held-back train record, best effort: a failing disk must not hide
    the original error."""
    run.checkpoints.wait_quietly(e)
    if p.unlogged is not None:  # the record of the last logging boundary
        try:
            write_train_record(run, p, p.unlogged)
        except Exception as log_error:
            e.add_note(f"while writing the last train record: {log_error}")
    run.recorder.update(status="failed", stopped_at_step=p.step, error=f"{type(e).__name__}: {e}")


# --- Helpers.


@jax.jit
def copy_tree(tree: Any) -> Any:
    """tree's arrays in new buffers, which donating the originals leaves intact (a jitted
    call's outputs never share its non-donated inputs' buffers); one dispatch for the tree.
    """
    return jax.tree.map(jnp.copy, tree)


def nonfinite_failure(step: int, metrics: dict[str, jax.Array]) -> dict[str, Any]:
    """The run-record entry for a stop on non-finite values: the step and the offending metric."""
    values = {k: float(metrics[k]) for k in ("loss", "grad_norm")}
    bad = [k for k, v in values.items() if not np.isfinite(v)]
    return {"step": step, "reason": "non-finite " + " and ".join(bad), **values}


def applied_steps(state: Any) -> int:
    """state.step on the host; a pmap-stacked state holds one equal copy per device."""
    return int(np.asarray(state.step.addressable_data(0)).reshape(-1)[0])


def skip_causes(tcfg: Any) -> str:
    """Why steps are skipped, for the divergence reason."""
    if tcfg.skip_grad_norm > 0:
        return f"non-finite, or gradient norm >= training.skip_grad_norm={tcfg.skip_grad_norm}"
    return "non-finite"


def total_skipped(history: list[dict[str, Any]]) -> int:
    """Updates dropped so far (non-finite, or a large gradient norm), from the train records."""
    return int(sum(r.get("skipped_steps", 0) for r in history if r["split"] == "train"))


def _scalar(value: Any) -> Any:
    if isinstance(value, int):  # counts (skipped_steps) stay integers
        return value
    return float(value) if np.ndim(value) == 0 else value.tolist()
