"""train_and_evaluate(cfg, paths): the training loop, read top to bottom.

Sections: keys, data, devices, model and optimizer, run record, checkpoints, steps, loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from src.training import interval as accum
from src.training.kl import kl_weight_from_config
from src.training.multistep import make_multi_step, steps_until_boundary
from src.training.setup import setup
from src.training.state import param_bytes, param_count
from src.training.step import Objective
from src.training.validation import evaluate_split
from src.utils import checkpoint, provenance, run_index
from src.utils.config import config_hash, save_config
from src.utils.console import Console, start_console
from src.utils.errors import ConfigError, RunDirError
from src.utils.io import atomic_write_json, read_json
from src.utils.parallel import (
    from_backend,
    initialize_distributed,
    replicated,
    split_on_devices,
    to_backend,
)
from src.utils.profiling import StepProfiler
from src.utils.recorder import Recorder, is_better
from src.utils.rundir import RunPaths
from src.utils.signals import StopRequest


def train_and_evaluate(
    cfg: Any, paths: RunPaths, resume: bool, on_start: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Trains cfg's model, validating and checkpointing as configured; returns metrics.json.

    on_start is called once every check has passed, just before the first step (entry.py
    deletes the run an --overwrite replaces there).
    """
    tcfg = cfg.training
    initialize_distributed(cfg.parallel)  # multi-host: before anything touches the devices
    writer = jax.process_index() == 0

    # --- Set-up: keys, data, devices, model and optimizer, steps (src/training/setup.py).
    run = setup(cfg)
    keys, splits, mesh, batches, state = run.keys, run.splits, run.mesh, run.batches, run.state
    per_epoch, total_steps, schedule = run.steps_per_epoch, run.total_steps, run.schedule
    batch_size, backend = tcfg.batch_size, cfg.parallel.backend

    # --- Checkpoints: model_last (latest steps) and model_best (best validation metric).
    last_manager = checkpoint.make_manager(paths.last, cfg.checkpoint.keep_last)
    best_manager = checkpoint.make_manager(paths.best, 1)
    interval, best_meta = accum.EMPTY, None
    if resume:
        restored = checkpoint.restore_newest(
            last_manager, checkpoint.abstract_like(state, replicated(mesh))
        )
        if restored is None:
            raise RunDirError(
                f"--resume: run {paths.run_dir.name} has no checkpoint in {paths.last} to "
                "continue from (it stopped before its first save); start it again with --overwrite"
            )
        state, meta = restored
        interval = accum.from_json(meta.get("train_interval"), replicated(mesh))
        if int(state.step) > total_steps:
            raise ConfigError(
                f"training.epochs={tcfg.epochs} plans {total_steps} steps but run "
                f"{paths.run_dir.name} has already done {int(state.step)}"
            )
        # The best checkpoint on disk is the truth: it may be ahead of the restored step when a
        # run died between the two saves; a bit-exact replay reaches the same value again.
        best_meta = checkpoint.latest_meta(best_manager)

    # --- Run record (written only once the checkpoints are known to be usable).
    header = {
        "run_id": paths.run_dir.name,
        "experiment": cfg.experiment.name,
        "config_hash": config_hash(cfg),
        "param_count": param_count(state.params),
        "model_bytes": param_bytes(state.params),
        "total_steps": total_steps,
        "train_bound": Objective.from_config(tcfg).describe(),
    }
    console = Console(
        cfg.logging.console and writer,
        total_steps=total_steps,
        steps_per_epoch=per_epoch,
        epochs=tcfg.epochs,
        start_step=int(state.step),
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
    recorder.truncate(int(state.step))
    recorder.update(best=None, skipped_steps=total_skipped(recorder.data["history"]))
    best = None
    if best_meta is not None:
        best = best_meta["val"][cfg.checkpoint.best_metric]
        recorder.set_best(best_meta["step"], cfg.checkpoint.best_metric, best)
    if writer:
        if resume:
            prov = read_json(paths.provenance)
            prov.setdefault("resumes", []).append(
                provenance.collect(tcfg.seed, {"from_step": int(state.step)})
            )
        else:
            data_info = {**splits.info, "on_device": batches.on_device}
            prov = provenance.collect(tcfg.seed, {"data": data_info})
        # On resume this records a changed training.epochs; otherwise it is the same text.
        save_config(cfg, paths.config)
        atomic_write_json(paths.provenance, prov)
    recorder.tensorboard(0, "model", {k: header[k] for k in ("param_count", "model_bytes")})
    # The header, and the parameter table (also in <log_dir>/params.txt); the fields that
    # seldom change are shown here and on a line only when they do.
    first = int(state.step)
    shown = {"kl_weight": float(kl_weight_from_config(tcfg.kl, first))}
    shown |= {"lr": float(schedule(first)), "skipped_steps": recorder.data["skipped_steps"]}
    start_console(
        console,
        cfg,
        paths,
        list(mesh.devices.flat),
        splits.info,
        header,
        state.params,
        shown=shown,
        write=writer,
    )

    # --- Steps.
    train_step, eval_step = run.train_step, run.eval_step
    # training.steps_per_call: K steps per dispatch between log/eval/checkpoint boundaries.
    k = tcfg.steps_per_call
    run_steps = make_multi_step(train_step, tcfg.nan_policy, batch_size, mesh)
    boundaries = (cfg.logging.every_steps, cfg.eval.every_steps, cfg.checkpoint.every_steps)

    pending_best: tuple[int, Any, dict[str, Any]] | None = None
    # A run that diverged without a non-finite step (nan_policy skip: too many skipped steps;
    # a non-finite validation): the failure, which ends the loop at the next boundary.
    diverged: dict[str, Any] | None = None

    def validate(step: int) -> None:
        nonlocal best, pending_best, diverged
        canonical = from_backend(state, mesh, backend)
        metrics = evaluate_split(
            eval_step,
            canonical.params,
            splits.val,
            cfg.eval.batch_size,
            keys["eval"],
            cfg.eval.active_threshold,
            split_on_devices(mesh),
        )
        recorder.log(step, "val", metrics)
        value = metrics[cfg.checkpoint.best_metric]
        bad = [k for k in dict.fromkeys(("elbo", cfg.checkpoint.best_metric)) if k in metrics]
        bad = [k for k in bad if not np.isfinite(metrics[k])]
        if bad and diverged is None:
            diverged = {"step": step, "reason": "non-finite validation " + " and ".join(bad)}
        if is_better(value, best, cfg.checkpoint.best_mode):
            best = value
            # Held on the device until the next model_last save writes it: one save per
            # checkpoint interval at most, however often validation improves. (A copy: the
            # next step donates the state.)
            pending_best = (step, copy_tree(canonical), metrics)

    # A model_best save not yet known to be on disk (saves are asynchronous): the record claims
    # it only once it is, so it never names a best checkpoint that a full disk lost.
    unconfirmed_best: tuple[int, float] | None = None

    def confirm_best() -> None:
        nonlocal unconfirmed_best
        if unconfirmed_best is not None:
            checkpoint.wait(best_manager)
            recorder.set_best(unconfirmed_best[0], cfg.checkpoint.best_metric, unconfirmed_best[1])
            unconfirmed_best = None

    def save_best() -> None:
        """Writes the best state validated since the last save to model_best."""
        nonlocal pending_best, unconfirmed_best
        if pending_best is None:
            return
        step, best_state, metrics = pending_best
        confirm_best()  # the save below would wait for the previous one anyway
        if step in best_manager.all_steps():  # left by a run that died ahead of its model_last
            best_manager.delete(step)
        checkpoint.save(best_manager, step, best_state, {"step": step, "val": metrics})
        unconfirmed_best = (step, metrics[cfg.checkpoint.best_metric])
        pending_best = None

    def save_last(step: int) -> None:
        """model_best if it changed, then model_last at step with the open logging interval
        (unless that step is saved already)."""
        save_best()
        recorder.save()  # metrics.json is never older than model_last (a resume relies on it)
        if last_manager.latest_step() != step:
            meta = {"step": step, "train_interval": accum.to_json(interval, elapsed())}
            checkpoint.save(last_manager, step, from_backend(state, mesh, backend), meta)

    def elapsed() -> float:
        return interval.seconds + time.perf_counter() - tic

    # --- Loop: no host work per step beyond dispatch; results are read at boundaries only.
    step = int(state.step)
    state = to_backend(state, mesh, backend)
    last: dict[str, jax.Array] | None = None  # loss and grad_norm of the latest step

    def check_stop() -> dict[str, Any] | None:
        """nan_policy stop: the failure, if a step since the last check was non-finite.

        Such a step left state.step behind and made the later steps no-ops (multistep.py);
        rewinds `step` and the interval to the last good step. Waits for the steps to finish.
        """
        nonlocal step, interval
        if tcfg.nan_policy != "stop":
            return None
        applied = applied_steps(state)
        if applied == step:
            return None
        interval = interval._replace(steps=interval.steps - (step - applied))
        step = applied
        assert last is not None  # a step has run
        return nonfinite_failure(step + 1, last)

    profiler = StepProfiler(cfg.profile, paths.log_dir, writer)  # profile.*: a trace of steps
    if on_start is not None:
        on_start()
    recorder.update(status="running")
    started_at = run_index.record_start(paths.run_dir, recorder.data, write=writer)
    tic = time.perf_counter()

    def untimed(task: Callable[[int], None], step: int) -> None:
        """Runs task(step) without counting its time in the interval's examples_per_sec."""
        nonlocal tic
        started = time.perf_counter()
        with console.untimed():  # nor its compilation in the console's
            task(step)
        tic += time.perf_counter() - started

    def log_train(step: int, sums: dict[str, jax.Array], steps: int, seconds: float) -> None:
        means = accum.means(jax.device_get(sums), steps)
        means["lr"] = float(schedule(step - 1))
        means["examples_per_sec"] = steps * batch_size / seconds
        recorder.log(step, "train", {k: _scalar(v) for k, v in means.items()})
        recorder.update(skipped_steps=recorder.data["skipped_steps"] + means["skipped_steps"])
        check_skipped(step)

    def check_skipped(step: int) -> None:
        """nan_policy skip: more than training.max_skipped_fraction of the steps so far skipped
        is a divergence, not noise."""
        nonlocal diverged
        skipped = recorder.data["skipped_steps"]
        if skipped > tcfg.max_skipped_fraction * step and diverged is None:
            diverged = {
                "step": step,
                "reason": f"{skipped} of {step} steps skipped (non-finite), more than "
                f"training.max_skipped_fraction={tcfg.max_skipped_fraction}",
            }

    # A train record is written (metrics.json, TensorBoard, console) after the next call has
    # been dispatched, so that the device computes meanwhile; at once where a validation, a
    # save or the end follows, which must come after it.
    unlogged: tuple[int, dict[str, jax.Array], int, float] | None = None
    failure: dict[str, Any] | None = None
    try:
        with StopRequest() as stop:
            while step < total_steps and stop.signum is None and diverged is None:
                n = k if steps_until_boundary(step, boundaries, total_steps) >= k else 1
                previous = last
                profiler.before(step)
                state, sums, last = run_steps(
                    state, interval.sums, last, batches.chunk(step, n), keys["train"], step
                )
                if unlogged is not None:
                    log_train(*unlogged)
                    unlogged = None
                interval = accum.Interval(sums, interval.steps + n, interval.seconds)
                step += n
                profiler.after(step, last)
                # The host may run one call ahead of the device, not more: bounded memory,
                # and the device never waits for the host.
                jax.block_until_ready(previous)
                if not any(step % e == 0 for e in boundaries) and step != total_steps:
                    continue
                checkpoint.poll(last_manager)  # checksums of saves finished meanwhile
                checkpoint.poll(best_manager)
                failure = check_stop()
                if failure is not None:
                    break
                evaluate = step % cfg.eval.every_steps == 0 or step == total_steps
                save = step % cfg.checkpoint.every_steps == 0 or step == total_steps
                if step % cfg.logging.every_steps == 0 or step == total_steps:
                    jax.block_until_ready(sums)  # the interval's time ends with its last step
                    unlogged = (step, sums, interval.steps, elapsed())
                    console.interval_end()
                    # The next interval's time starts here: it includes this logging, not
                    # validation or checkpoint saves.
                    tic = time.perf_counter()
                    interval = accum.EMPTY
                    if evaluate or save:
                        log_train(*unlogged)
                        unlogged = None
                if evaluate:
                    untimed(validate, step)
                if save:
                    untimed(save_last, step)
            if unlogged is not None:  # stopped by a signal right after a logging boundary
                log_train(*unlogged)
            if failure is None:  # stopped by a signal between boundaries, or diverged
                failure = check_stop() or diverged
            if stop.signum is not None or failure is not None:
                save_last(step)
            checkpoint.wait(last_manager)
            checkpoint.wait(best_manager)
            confirm_best()
        if failure is not None:
            recorder.update(status="failed", stopped_at_step=step, failure=failure)
        elif stop.signum is not None and step < total_steps:
            recorder.update(status="interrupted", stopped_at_step=step, signal=stop.name)
        else:
            recorder.update(status="completed")
    except BaseException as e:
        # Wait for saves already started, but a failing disk must not hide the original error.
        for manager in (last_manager, best_manager):
            try:
                checkpoint.wait(manager)
            except Exception as wait_error:  # reported with the original error below
                e.add_note(f"while waiting for checkpoints: {wait_error}")
        if unlogged is not None:  # the record of the last logging boundary, best effort
            try:
                log_train(*unlogged)
            except Exception as log_error:
                e.add_note(f"while writing the last train record: {log_error}")
        recorder.update(status="failed", stopped_at_step=step, error=f"{type(e).__name__}: {e}")
        raise
    finally:
        try:
            run_index.record_end(paths.run_dir, recorder.data, started_at, write=writer)
            batches.close()
            recorder.close()
            profiler.close(last)
        finally:
            checkpoint.close(last_manager)
            checkpoint.close(best_manager)
    return recorder.data


@jax.jit
def copy_tree(tree: Any) -> Any:
    """tree's arrays in new buffers, which donating the originals leaves intact (a jitted
    call's outputs never share its non-donated inputs' buffers). One dispatch: 0.3 ms for the
    baseline's state, where one eager jnp.copy per array took 3 to 5 ms."""
    return jax.tree.map(jnp.copy, tree)


def nonfinite_failure(step: int, metrics: dict[str, jax.Array]) -> dict[str, Any]:
    """The run-record entry for a stop on non-finite values: the step and the offending metric."""
    values = {k: float(metrics[k]) for k in ("loss", "grad_norm")}
    bad = [k for k, v in values.items() if not np.isfinite(v)]
    return {"step": step, "reason": "non-finite " + " and ".join(bad), **values}


def applied_steps(state: Any) -> int:
    """state.step on the host; a pmap-stacked state holds one equal copy per device."""
    return int(np.asarray(state.step.addressable_data(0)).reshape(-1)[0])


def total_skipped(history: list[dict[str, Any]]) -> int:
    """Steps dropped by nan_policy skip so far, from the train records."""
    return int(sum(r.get("skipped_steps", 0) for r in history if r["split"] == "train"))


def _scalar(value: Any) -> Any:
    if isinstance(value, int):  # counts (skipped_steps) stay integers
        return value
    return float(value) if np.ndim(value) == 0 else value.tolist()
