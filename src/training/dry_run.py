"""train.py --dry_run: what a run would do, computed without running it or writing anything.

The config is resolved and validated as for a run, the data is read (its split sizes), the
model and optimizer are built abstractly (nnx.eval_shape / jax.eval_shape: shapes and dtypes,
no parameter is allocated) and the train step is lowered and compiled by XLA for those
shapes, which gives its cost analysis (FLOPs, bytes accessed) and memory analysis (the
arguments, outputs and temporaries of the step on one device). Nothing is written: no run
folder, no runs.csv row, no compilation cache of the config's compile.cache_dir.
"""

from __future__ import annotations

from typing import Any, cast

import jax

from src.data.batches import fits_on_device
from src.data.pipeline import load_splits, planned_steps
from src.models.stack import unrolled
from src.training.device.parallel import (
    check_eval_batch,
    make_mesh,
    replicated,
    select_devices,
    split_on_devices,
)
from src.training.run.console import number, param_table, size
from src.training.run.rundir import RunPaths
from src.training.setup import build_state, build_train_step
from src.training.state import param_bytes, param_count
from src.utils.config import config_hash


def si(value: float, unit: str) -> str:
    """150.5 MFLOP: 4 significant digits and an SI prefix."""
    for prefix in ("", "k", "M", "G", "T", "P"):
        if abs(value) < 1000 or prefix == "P":
            return f"{number(value)} {prefix}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def step_analysis(
    cfg: Any, graphdef: Any, state: Any, tx: Any, schedule: Any, mesh: Any, example: Any
) -> tuple[dict[str, Any], Any]:
    """XLA's cost and memory analysis of one compiled train step on abstract inputs.

    pmap's step is not one jitted program: the jit step, which computes the same, stands in.
    A hierarchical model's FLOPs come from the same step with its stacks unrolled (XLA counts
    a loop body once); its memory from the program that trains.
    """
    tcfg = cfg.training
    backend = "jit" if cfg.parallel.backend == "pmap" else cfg.parallel.backend
    train_step = build_train_step(
        cfg, graphdef, tx, schedule, mesh, backend=backend, image_shape=example.shape
    )
    state = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated(mesh)), state
    )
    batch = jax.ShapeDtypeStruct(
        (tcfg.batch_size, *example.shape), example.dtype, sharding=split_on_devices(mesh)
    )
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated(mesh))
    compiled = cast(Any, train_step).lower(state, batch, key, True).compile()  # a jax.jit function
    try:
        memory = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        memory = None
    cost = dict(compiled.cost_analysis() or {})
    if cfg.model.type == "hierarchical":
        # XLA counts a scanned stack's body once: count the FLOPs of the unrolled program.
        with unrolled():
            counted = build_train_step(
                cfg, graphdef, tx, schedule, mesh, backend=backend, image_shape=example.shape
            )
            lowered = cast(Any, counted).lower(state, batch, key, True)
            cost = dict(lowered.compile().cost_analysis() or {})
    return cost, memory


def dry_run(cfg: Any, paths: RunPaths, *, resume: bool = False) -> str:
    """The report of --dry_run (see the module docstring)."""
    tcfg = cfg.training
    splits = load_splits(cfg.data)
    image_shape = tuple(splits.train.shape[1:])
    per_epoch, total_steps = planned_steps(tcfg, len(splits.train))
    devices = select_devices(cfg.parallel.num_devices, tcfg.batch_size)
    mesh = make_mesh(devices)
    check_eval_batch(cfg.eval.batch_size, mesh)

    # Abstract model and optimizer state: shapes and dtypes only.
    graphdef, tx, schedule, state = build_state(cfg, image_shape, total_steps, None)
    params, opt_bytes = state.params, param_bytes(state.opt_state)
    cost, memory = step_analysis(cfg, graphdef, state, tx, schedule, mesh, splits.train[0])

    info = splits.info
    source = ", ".join(
        f"{k} {info[k]}" for k in ("source", "path", "dir", "files", "kind") if k in info
    )
    sizes = ", ".join(f"{k} {v:,}" for k, v in info["num_examples"].items())
    data_bytes = splits.train.nbytes
    if cfg.data.on_device == "auto":
        fits = fits_on_device(data_bytes, devices, cfg.data.device_memory_fraction)
        placement = "on the device" if fits else "streamed from the host"
    else:
        placement = "on the device" if cfg.data.on_device == "true" else "streamed from the host"
    folder = "exists: --resume continues it" if paths.run_dir.exists() else "would be created"
    if paths.run_dir.exists() and not resume:
        folder = "exists: refused without --resume or --overwrite"
    evals = -(-total_steps // cfg.eval.every_steps)
    lines = [
        "dry run: nothing is trained or written",
        f"config:   valid, hash {config_hash(cfg)}; experiment {cfg.experiment.name}",
        f"run:      {paths.run_dir} ({folder}); logs {paths.log_dir}",
        f"data:     {info.get('name', cfg.data.name)} ({source}) {list(image_shape)} {splits.train.dtype}: "
        f"{sizes}; the training split is {size(data_bytes)}, kept {placement}",
        f"steps:    {total_steps:,} = {tcfg.epochs} epochs x {per_epoch:,} steps of batch "
        f"{tcfg.batch_size}; about {evals} validations of {len(splits.val):,} examples",
        f"devices:  {len(devices)} x {devices[0].platform}, backend {cfg.parallel.backend}",
        f"model:    {cfg.model.type}: {param_count(params):,} parameters, "
        f"{size(param_bytes(params))}; optimizer state {size(opt_bytes)}",
        "",
        param_table(params).rstrip("\n"),
        "",
        f"train step (XLA cost analysis of the compiled program, batch {tcfg.batch_size}):",
    ]
    flops = cost.get("flops")
    if flops is not None and flops >= 0:
        lines.append(
            f"  FLOPs:          {si(flops, 'FLOP')} per step ({si(flops / tcfg.batch_size, 'FLOP')} "
            f"per example); {si(flops * total_steps, 'FLOP')} for the run's {total_steps:,} steps"
        )
    else:
        lines.append("  FLOPs:          not reported by this backend")
    if cost.get("bytes accessed") is not None:
        lines.append(f"  bytes accessed: {size(cost['bytes accessed'])} per step")
    if memory is not None:
        args, out = memory.argument_size_in_bytes, memory.output_size_in_bytes
        alias, temp = memory.alias_size_in_bytes, memory.temp_size_in_bytes
        code = memory.generated_code_size_in_bytes
        total = args + out - alias + temp
        on_device = data_bytes if placement == "on the device" else 0
        lines.append(
            f"  device memory:  about {size(total + on_device)} per device: arguments "
            f"{size(args)}, outputs {size(out)} ({size(alias)} reuse donated arguments), "
            f"temporaries {size(temp)}"
            + (f", training split {size(on_device)}" if on_device else "")
            + (f"; code {size(code)}" if code else "")
        )
    else:
        lines.append("  device memory:  not reported by this backend")
    return "\n".join(lines)
