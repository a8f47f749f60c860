"""Speed of one config measured against the machine: the numbers scripts/benchmark.py writes.

The measurements, each in this process on the same device:

- the bare step: the AOT-compiled train step called back to back on one resident batch
  (compile time and XLA's FLOP count come from the same compilation);
- the real loop: train_and_evaluate on the config in a temporary workdir (TensorBoard as
  configured, console off), its steady-state rate taken from the train records'
  examples_per_sec (training and logging; validation and checkpoint saves left out); with
  training.steps_per_call K > 1 also at K = 1;
- the cost of a checkpoint save inside the loop (background writes competing with training
  included): the loop saving about 20 times against saving only at the end; its share at
  checkpoint.every_steps follows. Also one model_last save timed alone;
- the ceiling: a float32 matmul of size x size, whose best rate is what this device can do.

Each repeat times the bare step and then runs every loop variant, so that all of them see
the same machine load; medians over `repeats` are reported (the machine may be shared).
MFU = (XLA FLOPs per step x bare steps/s) / ceiling. XLA counts a multiply-add as 2 FLOPs, as
the matmul's 2 n^3 does.
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from src.data.pipeline import load_splits, planned_steps
from src.models.registry import build_model, latent_units
from src.models.stack import unrolled
from src.training.device.parallel import make_mesh, replicated, split_on_devices
from src.training.keys import estimator_keys, run_keys, step_key
from src.training.loop import train_and_evaluate
from src.training.losses import vae_terms
from src.training.optim import build_optimizer
from src.training.run import checkpoint
from src.training.run.rundir import prepare, run_paths
from src.training.setup import Setup, setup
from src.training.state import param_count, split_model
from src.utils.config import apply_overrides, freeze, read_schema, to_plain, validate
from src.utils.errors import ConfigError


def matmul_ceiling(size: int, repeats: int) -> dict[str, float]:
    """Best float32 FLOP/s of a [size, size] @ [size, size] product on the default device."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - tic)
    return {"size": size, "best_s": min(times), "flops_per_s": 2 * size**3 / min(times)}


def with_overrides(cfg: Any, overrides: list[str]) -> Any:
    """cfg with 'section.key=value' overrides applied and validated again."""
    tree = apply_overrides(to_plain(cfg), overrides)
    return freeze(validate(tree, read_schema()))


def xla_flops(compiled: Any) -> float | None:
    """FLOPs of one call from XLA's cost analysis (None where the backend gives none)."""
    try:
        cost = compiled.cost_analysis()
    except NotImplementedError:
        return None
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None else None


def build_step(cfg: Any) -> Setup:
    """cfg's run as the loop builds it (src/training/setup.py), for the jit or shard_map backend."""
    if cfg.parallel.backend == "pmap":  # the pmap step is not one jitted function
        raise ConfigError(
            "benchmark.py: parallel.backend=pmap is not supported; use parallel.backend=jit"
        )
    return setup(cfg)


def reference_step(cfg: Any, steps: int) -> Callable[[], float]:
    """The simplest step a user could write, as the Flax VAE example writes one, to compare
    against: the same model, likelihood, optimizer and batch; jax.jit without donation or
    sharding; noise and binarization drawn inside; one host numpy batch passed per call; the
    loss as its only output (no metrics, no NaN guard, no KL schedule). A hierarchical model is
    traced with its stacks unrolled (src/models/stack.py:unrolled): the Python loop over blocks
    a user would write, where the project scans over stacked blocks. Returns time_steps(),
    steps per second of `steps` back-to-back calls."""
    tcfg = cfg.training
    splits = load_splits(cfg.data)
    batch = np.asarray(splits.train[: tcfg.batch_size])
    init_key = run_keys(tcfg.seed)["init"]
    model = build_model(cfg.model, batch.shape[1:], nnx.Rngs(params=init_key))
    graphdef, params = split_model(model)
    tx, _ = build_optimizer(cfg.optimizer, tcfg.lr, planned_steps(tcfg, len(splits.train))[1])
    opt_state = tx.init(params)
    binarize = cfg.data.binarize == "dynamic"
    units = latent_units(cfg.model, batch.shape[1:])

    @jax.jit
    def step(params: Any, opt_state: Any, x: jax.Array, key: jax.Array) -> tuple:
        k_eps, k_bin = jax.random.split(key)
        if binarize:
            x = jax.random.bernoulli(k_bin, x).astype(x.dtype)

        def loss_fn(params: Any) -> jax.Array:
            eps = jax.random.normal(k_eps, (x.shape[0], units))
            terms = vae_terms(nnx.merge(graphdef, params), x, eps, None)
            return terms.recon.mean() + terms.kl_per_dim.sum(-1).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    keys = [jax.random.key(s) for s in range(steps)]
    with unrolled():  # traced here, once; no effect on a model without stacks
        params, opt_state, loss = step(params, opt_state, batch, keys[0])  # compile
    jax.block_until_ready(loss)

    def time_steps() -> float:
        nonlocal params, opt_state, loss
        tic = time.perf_counter()
        for k in keys:
            params, opt_state, loss = step(params, opt_state, batch, k)
        jax.block_until_ready((params, opt_state, loss))
        return steps / (time.perf_counter() - tic)

    return time_steps


def step_timer(
    step: Callable[..., tuple[Any, Any]], state: Any, batch: jax.Array, keys: list[jax.Array]
) -> tuple[Callable[[], float], dict[str, Any]]:
    """Calls step(state, batch, key) once (compiling it), then returns time_steps(), the
    steps/s of one back-to-back call per key on the resident batch, continuing from the state
    the last timing left; and `latest`, that run's latest {"state", "metrics"}."""
    state, metrics = step(state, batch, keys[0])
    latest: dict[str, Any] = {"state": jax.block_until_ready(state), "metrics": metrics}

    def time_steps() -> float:
        state = latest["state"]
        tic = time.perf_counter()
        for k in keys:
            state, metrics = step(state, batch, k)
        jax.block_until_ready((state, metrics))
        latest.update(state=state, metrics=metrics)
        return len(keys) / (time.perf_counter() - tic)

    return time_steps, latest


def alternate(timers: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each timer's rates over `repeats` rounds, the timers taking turns within every round, so
    that all of them see the same machine load."""
    runs: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, time_steps in timers.items():
            runs[name].append(time_steps())
    return runs


def bare_step(
    cfg: Any, steps: int, repeats: int, started: float
) -> tuple[dict[str, Any], Callable[[], float]]:
    """Builds the train step as the loop does and AOT-compiles it; returns the measurements
    and time_steps(), which times the compiled step on one batch (called by run_benchmark
    between the loop runs, so that both see the same machine load).

    Also measures the work the loop does per single step outside the compiled call (the batch
    provider's bookkeeping; the gather itself runs inside the call), and the time of one
    model_last save (the part the loop waits for, and until it is on disk).
    """
    run = build_step(cfg)
    keys, batches, per_epoch, state = run.keys, run.batches, run.steps_per_epoch, run.state
    batch = batches(0)
    key = step_key(keys["train"], 0)
    setup_s = time.perf_counter() - started

    tic = time.perf_counter()
    jitted: Any = run.train_step  # a jax.jit function; its type alias hides .lower
    active = jnp.bool_(True)  # a step that applies its update, as every loop step before a stop
    lowered = jitted.lower(state, batch, key, active)
    lower_s = time.perf_counter() - tic
    tic = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - tic
    step_keys = [step_key(keys["train"], s) for s in range(steps)]  # [0] is key
    time_steps, latest = step_timer(
        lambda state, batch, k: compiled(state, batch, k, active), state, batch, step_keys
    )
    time_to_first_step = time.perf_counter() - started

    # What the loop does per single-step call besides the call: the batches' bookkeeping.
    host = []
    for s in range(steps):
        tic = time.perf_counter()
        jax.block_until_ready(batches.chunk(s % per_epoch, 1))
        host.append(time.perf_counter() - tic)
    batches.close()

    saves = checkpoint_seconds(latest["state"], repeats)
    flops = xla_flops(compiled)
    measured = {
        "param_count": param_count(state.params),
        "steps_per_epoch": per_epoch,
        "setup_s": setup_s,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "time_to_first_step_s": time_to_first_step,
        "host_s_per_step": statistics.median(host),
        "flops_per_step": flops,
        **saves,
    }
    return measured, time_steps


def checkpoint_seconds(state: Any, repeats: int) -> dict[str, float]:
    """Median time of a model_last save: blocking (what the loop waits) and until on disk."""
    blocking, total = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = checkpoint.Folder(Path(tmp) / "model_last", 1)
        for step in range(1, repeats + 1):
            tic = time.perf_counter()
            folder.save(step, state, {"step": step})
            blocking.append(time.perf_counter() - tic)
            folder.wait()
            total.append(time.perf_counter() - tic)
        folder.close()
    return {
        "checkpoint_save_blocking_s": statistics.median(blocking),
        "checkpoint_save_total_s": statistics.median(total),
    }


def loop_run(cfg: Any, workdir: Path, run_id: str) -> dict[str, Any]:
    """Runs train_and_evaluate; wall time and the median steady-state rate of its records.

    The first train record holds the compilation and is left out of the steady state.
    """
    paths = run_paths(workdir, run_id)
    prepare(paths, resume=False, overwrite=False)
    tic = time.perf_counter()
    record = train_and_evaluate(cfg, paths, resume=False)
    wall = time.perf_counter() - tic
    if record["status"] != "completed":
        raise ConfigError(
            f"benchmark: the loop run ended {record['status']} at step "
            f"{record.get('stopped_at_step')}: {record.get('failure')}"
        )
    rates = [r["examples_per_sec"] for r in record["history"] if r["split"] == "train"][1:]
    if not rates:  # one logging interval only: nothing after compilation to time
        raise ConfigError(
            f"benchmark: the loop of {record['total_steps']} steps logs only once "
            f"(logging.every_steps={cfg.logging.every_steps}); raise --steps or lower it"
        )
    examples = statistics.median(rates)
    return {
        "wall_s": wall,
        "total_steps": record["total_steps"],
        "examples_per_s": examples,
        "steps_per_s": examples / cfg.training.batch_size,
    }


def iwae_floor(
    graphdef: nnx.GraphDef,
    params: Any,
    x: np.ndarray,
    latent_dim: int,
    samples: int,
    rows: int,
    ceiling: float,
) -> dict[str, float]:
    """The least time an IWAE pass over x with `samples` samples per image can take here: the
    decoder's FLOPs (XLA's count for one call of `rows` rows) over the matmul ceiling, plus the
    likelihood's elementwise work (the best measured time of model.nll on `rows` rows)."""
    z = jnp.zeros((rows, latent_dim), jnp.float32)
    decode = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))
    flops = xla_flops(decode.lower(params, z).compile()) or 0.0
    outputs = decode(params, z)
    images = jnp.broadcast_to(jnp.asarray(x[:1]), (rows, *x.shape[1:]))
    nll = jax.jit(lambda p, o, x: nnx.merge(graphdef, p).nll(o, x))
    nll(params, outputs, images).block_until_ready()
    times = []
    for _ in range(5):
        tic = time.perf_counter()
        nll(params, outputs, images).block_until_ready()
        times.append(time.perf_counter() - tic)
    calls = len(x) * samples / rows
    matmul_s, likelihood_s = flops * calls / ceiling, min(times) * calls
    return {
        "decoder_flops_per_sample": flops / rows,
        "matmul_floor_s": matmul_s,
        "likelihood_floor_s": likelihood_s,
        "floor_s": matmul_s + likelihood_s,
    }


def iwae_seconds(cfg: Any, num_images: int, ceiling: float) -> dict[str, Any]:
    """Wall time of the IWAE bound (eval.iwae_samples, eval.iwae_chunk) on num_images test images,
    and its floor on this machine (iwae_floor, from `ceiling` FLOP/s).

    The code path of scripts/evaluate.py (make_posterior_step over eval.batch_size batches),
    with freshly initialized parameters: the cost does not depend on their values. The first
    batch includes the compilation; it is reported on its own.
    """
    from src.evaluation.evaluate import make_posterior_step, posterior_pass

    splits = load_splits(cfg.data)
    x = splits.test[:num_images]
    init_key = run_keys(cfg.training.seed)["init"]
    model = build_model(cfg.model, x.shape[1:], nnx.Rngs(params=init_key))
    graphdef, params = split_model(model)
    mesh = make_mesh(jax.local_devices())
    params = jax.device_put(params, replicated(mesh))
    step = make_posterior_step(
        graphdef,
        mesh,
        iwae_samples=cfg.eval.iwae_samples,
        iwae_chunk=cfg.eval.iwae_chunk,
    )
    keys = estimator_keys(cfg.training.seed)
    split = split_on_devices(mesh)
    tic = time.perf_counter()
    posterior_pass(step, params, x[: cfg.eval.batch_size], cfg.eval.batch_size, keys, split)
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    out = posterior_pass(step, params, x, cfg.eval.batch_size, keys, split)
    total = time.perf_counter() - tic
    rows = cfg.eval.batch_size * cfg.eval.iwae_chunk  # decoder rows per chunk of one call
    floor = iwae_floor(
        graphdef, params, x, cfg.model.latent_dim, cfg.eval.iwae_samples, rows, ceiling
    )
    return {
        "images": len(x),
        "samples": cfg.eval.iwae_samples,
        "chunk": cfg.eval.iwae_chunk,
        "batch_size": cfg.eval.batch_size,
        "first_batch_with_compile_s": first,
        "seconds": total,
        "finite": bool(np.isfinite(out["log_px"]).all()),
        **floor,
        "over_floor": total / floor["floor_s"],
    }


def run_benchmark(
    cfg: Any, steps: int, repeats: int, matmul_size: int, iwae_images: int, started: float
) -> dict[str, Any]:
    """All measurements of one config; `started` is the process's perf_counter at launch.

    iwae_images > 0 also times the IWAE evaluation on that many test images.
    """
    bare, time_steps = bare_step(cfg, steps, repeats, started)
    per_epoch = bare["steps_per_epoch"]
    epochs = max(1, -(-steps // per_epoch))
    loop_cfg = with_overrides(cfg, [f"training.epochs={epochs}", "logging.console=false"])
    k = cfg.training.steps_per_call
    total = epochs * per_epoch
    single_cfg = with_overrides(loop_cfg, ["training.steps_per_call=1"])
    # Checkpoint cost in the loop, background writes included: the same run saving often
    # (about 20 times, at multiples of K) against saving only at the end.
    save_every = max(k, total // 20 // k * k)
    often_cfg = with_overrides(loop_cfg, [f"checkpoint.every_steps={save_every}"])
    rarely_cfg = with_overrides(loop_cfg, [f"checkpoint.every_steps={total}"])
    time_reference = reference_step(cfg, steps)
    bares, references, loops, singles, often, rarely = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):  # alternated, so that every variant sees the same load
            bares.append(time_steps())
            references.append(time_reference())
            loops.append(loop_run(loop_cfg, Path(tmp), f"loop{r}"))
            if k > 1:
                singles.append(loop_run(single_cfg, Path(tmp), f"single{r}"))
            often.append(loop_run(often_cfg, Path(tmp), f"often{r}"))
            rarely.append(loop_run(rarely_cfg, Path(tmp), f"rarely{r}"))
    bare_rate = statistics.median(bares)
    reference_rate = statistics.median(references)
    bare.update(
        steps_per_s=bare_rate,
        steps_per_s_runs=bares,
        examples_per_s=bare_rate * cfg.training.batch_size,
    )
    loop_rate = statistics.median(x["steps_per_s"] for x in loops)
    single_rate = statistics.median(x["steps_per_s"] for x in singles) if singles else None
    saves = -(-total // save_every) - 1  # the final save is common to both
    per_save = None
    if saves > 0:
        often_s = statistics.median(x["wall_s"] for x in often)
        per_save = (often_s - statistics.median(x["wall_s"] for x in rarely)) / saves
    ceiling = matmul_ceiling(matmul_size, repeats)
    flops = bare["flops_per_step"]
    achieved = flops * bare["steps_per_s"] if flops is not None else None
    every = cfg.checkpoint.every_steps

    def share(save_s: float | None) -> float | None:
        """Share of wall time of one save per `every` steps (a negative estimate counts as 0)."""
        if save_s is None:
            return None
        return max(save_s, 0.0) / (max(save_s, 0.0) + every / loop_rate)

    memory = jax.devices()[0].memory_stats() or {}
    return {
        "experiment": cfg.experiment.name,
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "batch_size": cfg.training.batch_size,
        "steps_per_call": cfg.training.steps_per_call,
        "steps_timed": steps,
        "repeats": repeats,
        **bare,
        "flops_per_s": achieved,
        "matmul_ceiling": ceiling,
        "mfu": achieved / ceiling["flops_per_s"] if achieved is not None else None,
        # The plain step of reference_step, timed alternately with the bare step.
        "reference": {
            "steps_per_s": reference_rate,
            "steps_per_s_runs": references,
            "examples_per_s": reference_rate * cfg.training.batch_size,
            "bare_over_reference": bare_rate / reference_rate,
        },
        "loop": {
            "epochs": epochs,
            "total_steps": epochs * per_epoch,
            "steps_per_s": loop_rate,
            "examples_per_s": loop_rate * cfg.training.batch_size,
            "overhead_vs_bare": 1.0 - loop_rate / bare["steps_per_s"],
            "over_reference": loop_rate / reference_rate,  # the loop as users run it
            "runs": loops,
            # With steps_per_call K > 1: the same loop at K = 1, and the K-step loop's speed-up.
            "steps_per_s_k1": single_rate,
            "speedup_vs_k1": loop_rate / single_rate if single_rate else None,
            "runs_k1": singles,
        },
        # One save (model_last, and model_best if it changed) per checkpoint.every_steps steps
        # of the steady-state loop, at the cost per save measured in the loop.
        "checkpoint_every_steps": every,
        "checkpoint_ab": {
            "every_steps": save_every,
            "saves": saves,
            "wall_s_saving_often": [x["wall_s"] for x in often],
            "wall_s_saving_at_end": [x["wall_s"] for x in rarely],
            "seconds_per_save": per_save,
        },
        "checkpoint_share": share(per_save),
        "checkpoint_share_blocking_only": share(bare["checkpoint_save_blocking_s"]),
        "iwae": iwae_seconds(cfg, iwae_images, ceiling["flops_per_s"]) if iwae_images else None,
        "peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_device_bytes": memory.get("peak_bytes_in_use"),
        "jax": jax.__version__,
    }
