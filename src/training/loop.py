"""train_and_evaluate(cfg, paths): the training loop, read top to bottom.

Sections: keys, data, devices, model and optimizer, run record, checkpoints, steps, loop.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from src.data.batches import make_batches
from src.data.pipeline import load_splits, steps_per_epoch
from src.evaluation.metrics import evaluate_split
from src.models.registry import build_model
from src.training.optim import build_optimizer
from src.training.state import init_state, param_bytes, param_count, split_model
from src.training.step import make_eval_step, make_mesh, make_train_step
from src.utils import checkpoint, provenance
from src.utils.config import config_hash, save_config
from src.utils.errors import ConfigError
from src.utils.io import atomic_write_json, read_json
from src.utils.recorder import Recorder, is_better
from src.utils.reproducibility import seed_host_rngs
from src.utils.rundir import RunPaths


def select_devices(num_devices: int, batch_size: int) -> list[Any]:
    """The first num_devices devices (0 = all); the global batch must split evenly over them."""
    available = jax.devices()
    if num_devices > len(available):
        raise ConfigError(
            f"parallel.num_devices={num_devices} but only {len(available)} devices are available"
        )
    devices = available[:num_devices] if num_devices else available
    if batch_size % len(devices):
        raise ConfigError(
            f"training.batch_size={batch_size} does not divide evenly over {len(devices)} devices"
        )
    return devices


def derive_keys(seed: int) -> dict[str, jax.Array]:
    """One root key split once into the four streams the run uses."""
    init, data, train, evaluation = jax.random.split(jax.random.key(seed), 4)
    return {"init": init, "data": data, "train": train, "eval": evaluation}


def train_and_evaluate(cfg: Any, paths: RunPaths, resume: bool) -> dict[str, Any]:
    """Trains cfg's model, validating and checkpointing as configured; returns metrics.json."""
    tcfg = cfg.training
    writer = jax.process_index() == 0

    # --- Keys: init / data order / train-step noise / eval noise.
    seed_host_rngs(tcfg.seed)
    keys = derive_keys(tcfg.seed)

    # --- Data: on the devices, or streamed from the host (data.on_device).
    splits = load_splits(cfg.data)
    image_shape = splits.train.shape[1:]
    batch_size = tcfg.batch_size
    per_epoch = steps_per_epoch(len(splits.train), batch_size)
    total_steps = tcfg.epochs * per_epoch

    # --- Devices.
    devices = select_devices(cfg.parallel.num_devices, batch_size)
    mesh = make_mesh(devices)
    replicated = NamedSharding(mesh, P())
    batches = make_batches(splits.train, keys["data"], batch_size, per_epoch, replicated, cfg.data)

    # --- Model and optimizer: NNX once, pure pytrees from here on.
    model = build_model(cfg.model, image_shape, nnx.Rngs(params=keys["init"]))
    graphdef, params = split_model(model)
    del model
    tx, schedule = build_optimizer(cfg.optimizer, tcfg.lr, total_steps)
    state = jax.device_put(init_state(params, tx), replicated)

    # --- Run record.
    header = {
        "run_id": paths.run_dir.name,
        "experiment": cfg.experiment.name,
        "config_hash": config_hash(cfg),
        "param_count": param_count(state.params),
        "model_bytes": param_bytes(state.params),
        "total_steps": total_steps,
    }
    recorder = Recorder(
        paths.metrics,
        paths.log_dir,
        header,
        tensorboard=cfg.logging.tensorboard,
        console=cfg.logging.console,
        write=writer,
        resume=resume,
    )
    if writer:
        if resume:
            prov = read_json(paths.provenance)
            prov.setdefault("resumes", []).append(provenance.collect(tcfg.seed))
        else:
            save_config(cfg, paths.config)
            data_info = {**splits.info, "on_device": batches.on_device}
            prov = provenance.collect(tcfg.seed, {"data": data_info})
        atomic_write_json(paths.provenance, prov)

    # --- Checkpoints: model_last (latest steps) and model_best (best validation metric).
    last_manager = checkpoint.make_manager(paths.last, cfg.checkpoint.keep_last)
    best_manager = checkpoint.make_manager(paths.best, 1)
    if resume and last_manager.latest_step() is not None:
        state, _ = checkpoint.restore(last_manager, checkpoint.abstract_like(state, replicated))
        recorder.truncate(int(state.step))
    best = recorder.data["best"]["value"] if recorder.data["best"] else None
    if recorder.tb is not None:
        recorder.tb.add_scalar("model/param_count", header["param_count"], 0)
        recorder.tb.add_scalar("model/model_bytes", header["model_bytes"], 0)

    # --- Steps.
    step_args = {
        "latent_dim": cfg.model.latent_dim,
        "likelihood": cfg.model.likelihood,
        "dynamic_binarize": cfg.data.binarize == "dynamic",
    }
    train_step = make_train_step(graphdef, tx, schedule, mesh, beta=tcfg.kl.beta, **step_args)
    eval_step = make_eval_step(graphdef, **step_args)

    def validate(step: int) -> None:
        nonlocal best
        metrics = evaluate_split(
            eval_step,
            state.params,
            splits.val,
            cfg.eval.batch_size,
            keys["eval"],
            cfg.eval.active_threshold,
        )
        recorder.log(step, "val", metrics)
        value = metrics[cfg.checkpoint.best_metric]
        if is_better(value, best, cfg.checkpoint.best_mode):
            best = value
            recorder.set_best(step, cfg.checkpoint.best_metric, value)
            checkpoint.save(best_manager, step, state, {"step": step, "val": metrics})

    # --- Loop.
    step = int(state.step)
    recorder.update(status="running")
    sums: dict[str, jax.Array] | None = None
    count, tic = 0, time.perf_counter()
    try:
        while step < total_steps:
            batch = batches(step)
            state, metrics = train_step(state, batch, jax.random.fold_in(keys["train"], step))
            sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
            count += 1
            step += 1
            if step % cfg.logging.every_steps == 0 or step == total_steps:
                means: dict[str, Any] = {
                    k: np.asarray(v) / count for k, v in jax.device_get(sums).items()
                }
                elapsed = time.perf_counter() - tic
                means["lr"] = float(schedule(step - 1))
                means["examples_per_sec"] = count * batch_size / elapsed
                recorder.log(step, "train", {k: _scalar(v) for k, v in means.items()})
                sums, count = None, 0
            if step % cfg.eval.every_steps == 0 or step == total_steps:
                validate(step)
            if step % cfg.checkpoint.every_steps == 0 or step == total_steps:
                checkpoint.save(last_manager, step, state, {"step": step})
            if count == 0:  # an interval ended: time the next one from here, excluding eval/saves
                tic = time.perf_counter()
        last_manager.wait_until_finished()
        best_manager.wait_until_finished()
        recorder.update(status="completed")
    except BaseException as e:
        last_manager.wait_until_finished()
        best_manager.wait_until_finished()
        interrupted = isinstance(e, KeyboardInterrupt)
        recorder.update(status="interrupted" if interrupted else "failed", stopped_at_step=step)
        raise
    finally:
        batches.close()
        recorder.close()
        last_manager.close()
        best_manager.close()
    return recorder.data


def _scalar(value: np.ndarray) -> Any:
    return float(value) if np.ndim(value) == 0 else value.tolist()
