"""evaluate_run: restore a saved train state and evaluate one split with the costly estimators.

Sections: run config, restore, estimators, figures, record. Everything that can be a user
mistake (run dir, config, checkpoint, structure) is checked before anything is written.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from src.data.pipeline import load_splits, padded_batches, planned_steps
from src.evaluation import figures
from src.evaluation.estimators import iwae_log_likelihood, mutual_information
from src.evaluation.metrics import kl_mass_units
from src.models.registry import latent_groups, latent_units
from src.training.device.parallel import check_eval_batch, make_mesh, replicated, split_on_devices
from src.training.keys import batch_key, estimator_keys, figure_keys
from src.training.run import checkpoint, identity
from src.training.run.console import duration
from src.training.run.recorder import read_record
from src.training.setup import abstract_train_state
from src.training.state import TrainState, eval_params
from src.training.step import make_eval_step
from src.training.validation import evaluate_split, on_devices
from src.utils.config import config_hash, load_saved_config, parse_override
from src.utils.errors import ConfigError, RunDirError, StorageError
from src.utils.io import atomic_write_json

CHECKPOINTS = {"best": "model_best", "last": "model_last"}
# Times a step removed while it was read (rotated away by a training run's save) is replaced by
# the newer one before evaluate gives up.
ROTATION_RETRIES = 3
SPLITS = ("train", "val", "test")
# --- Run config.


def load_run_config(run_dir: Path, overrides: Sequence[str]) -> Any:
    """The run's saved config with eval.* overrides; any other override is a ConfigError."""
    if not run_dir.is_dir():
        raise RunDirError(f"--run_dir {run_dir}: no such directory")
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"--run_dir {run_dir}: not a run directory (no config.yaml)")
    for key, _ in map(parse_override, overrides):
        if not key.startswith("eval."):
            raise ConfigError(
                f"--config.{key}: evaluate.py accepts only eval.* overrides; the rest of the "
                "config is the run's own config.yaml"
            )
    return load_saved_config(run_dir / "config.yaml", overrides)


# --- Restore.


def restore_state(
    run_dir: Path,
    name: str,
    abstract: TrainState,
    sharding: jax.sharding.Sharding,
    owner: checkpoint.Owner = checkpoint.UNCHECKED,
) -> tuple[TrainState, dict[str, Any]]:
    """Restores the latest step of model_best/model_last onto abstract with sharding.

    The target's sharding, not the saved one, decides placement, so a run saved from any
    number of devices restores on the current ones.
    """
    directory = run_dir / CHECKPOINTS[name]
    if not directory.is_dir():
        raise RunDirError(f"--checkpoint={name}: no folder {directory}")
    for attempt in range(ROTATION_RETRIES + 1):
        with checkpoint.open_manager(directory) as manager:
            step = manager.latest_step()
            if step is None:
                raise RunDirError(f"--checkpoint={name}: no complete checkpoint in {directory}")
            try:
                checkpoint.check_matches(manager, step, abstract, owner)
                return checkpoint.restore(
                    manager, checkpoint.abstract_like(abstract, sharding), step, owner
                )
            except (checkpoint.CorruptStep, OSError):
                # A training run saving meanwhile rotated the step away: read the newer one.
                if (directory / str(step)).exists() or attempt == ROTATION_RETRIES:
                    raise
    raise AssertionError("unreachable")


# --- Estimators.


def make_posterior_step(
    graphdef: nnx.GraphDef, mesh: Mesh, *, iwae_samples: int, iwae_chunk: int
) -> Callable[..., dict[str, jax.Array]]:
    """step(params, x, iwae_key) -> IWAE bound [B] and posterior parameters [B, D] (a
    hierarchical model: the bound only).

    x may be split over the mesh (each device scores its examples); the outputs come back
    replicated.
    """

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
    def step(params: Any, x: jax.Array, iwae_key: jax.Array) -> dict:
        model = nnx.merge(graphdef, params)
        log_px = iwae_log_likelihood(model, x, iwae_key, iwae_samples, iwae_chunk)
        if not hasattr(model, "encode"):  # hierarchical: no single Gaussian posterior
            return {"log_px": log_px}
        mean, logvar = model.encode(x)
        return {"log_px": log_px, "mean": mean, "logvar": logvar}

    return step


class PassProgress:
    """One plain stderr line per batch of a long pass, readable in a log file:
    `evaluate: iwae k=5000 on 10000 images: 2560/10000, 1:30 elapsed, eta 4:22`.

    The ETA is the rate since the first batch, whose time includes the compilation."""

    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.label, self.total, self.stream, self.clock = label, total, stream, clock
        self.start = clock()
        self.first: tuple[int, float] | None = None

    def __call__(self, done: int) -> None:
        now = self.clock()
        line = f"evaluate: {self.label} on {self.total} images: {done}/{self.total}, "
        line += f"{duration(now - self.start)} elapsed"
        if self.first is None:
            self.first = (done, now)
        elif done > self.first[0] and done < self.total:
            rate = (now - self.first[1]) / (done - self.first[0])
            line += f", eta {duration((self.total - done) * rate)}"
        print(line, file=self.stream or sys.stderr, flush=True)


def posterior_pass(
    step: Callable[..., dict[str, jax.Array]],
    params: Any,
    x: np.ndarray,
    batch_size: int,
    keys: dict[str, jax.Array],
    batch_sharding: jax.sharding.Sharding,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Runs step over x in the ELBO's batch order, each batch split over batch_sharding's
    devices; returns per-example arrays (padding dropped). progress(images done) follows each
    batch."""
    batches, masks = padded_batches(x, batch_size)
    outs, done = [], 0
    for i, batch in enumerate(batches):
        key = batch_key(keys["iwae"], i)
        outs.append(jax.device_get(step(params, on_devices(batch, batch_sharding), key)))
        done += int(masks[i].sum())
        if progress is not None:
            progress(done)
    keep = masks.reshape(-1) > 0
    return {k: np.concatenate([np.asarray(o[k]) for o in outs])[keep] for k in outs[0]}


def compute_metrics(
    cfg: Any,
    graphdef: nnx.GraphDef,
    params: Any,
    x: np.ndarray,
    keys: dict[str, jax.Array],
    mesh: Mesh,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """All metrics of one split (nats per example unless named otherwise) and the posteriors.

    params replicated over mesh; every batch is split over its devices."""
    ecfg = cfg.eval
    print(f"evaluate: elbo on {len(x)} images (the validation pass)", file=sys.stderr, flush=True)
    groups = latent_groups(cfg.model, x.shape[1:])
    # The training run's own validation function: same key, batch size and batch order.
    base = evaluate_split(
        make_eval_step(graphdef, mesh, latent_dim=latent_units(cfg.model, x.shape[1:])),
        params,
        x,
        ecfg.batch_size,
        keys["elbo"],
        ecfg.active_threshold,
        split_on_devices(mesh),
        groups=groups,
        kl_mass_share=ecfg.kl_mass_share,
    )
    step = make_posterior_step(
        graphdef,
        mesh,
        iwae_samples=ecfg.iwae_samples,
        iwae_chunk=ecfg.iwae_chunk,
    )
    label = f"iwae k={ecfg.iwae_samples}"
    progress = PassProgress(label, len(x))
    post = posterior_pass(step, params, x, ecfg.batch_size, keys, split_on_devices(mesh), progress)
    nll = -float(np.mean(post["log_px"].astype(np.float64)))
    dims = math.prod(x.shape[1:])
    bits = dims * math.log(2.0)
    if groups is not None:  # per-group metrics come from the validation pass
        return {
            **base,
            "iwae_nll": nll,
            "iwae_samples": ecfg.iwae_samples,
            "bits_per_dim": nll / bits,
            "elbo_bits_per_dim": -base["elbo"] / bits,
            "data_dims": dims,
            "active_threshold": ecfg.active_threshold,
            "kl_mass_share": ecfg.kl_mass_share,
            "group_sizes": list(groups),
        }, post
    print(
        f"evaluate: mutual information on {len(x)} images ({ecfg.mi_samples} samples each)",
        file=sys.stderr,
        flush=True,
    )
    mi = mutual_information(
        keys["mi"],
        jnp.asarray(post["mean"]),
        jnp.asarray(post["logvar"]),
        ecfg.mi_samples,
        ecfg.batch_size,
    )
    metrics = {
        **base,
        "iwae_nll": nll,
        "iwae_samples": ecfg.iwae_samples,
        "mutual_info": float(mi),
        "mi_samples": ecfg.mi_samples,
        "bits_per_dim": nll / bits,
        "elbo_bits_per_dim": -base["elbo"] / bits,
        "data_dims": dims,
        "active_threshold": ecfg.active_threshold,
        "kl_mass_units": kl_mass_units(np.asarray(base["kl_per_dim"]), ecfg.kl_mass_share),
        "kl_mass_share": ecfg.kl_mass_share,
        "posterior_mean_var": np.var(post["mean"].astype(np.float64), axis=0).tolist(),
    }
    return metrics, post


# --- Figures.


def figure_arrays(
    cfg: Any,
    graphdef: nnx.GraphDef,
    params: Any,
    x: np.ndarray,
    post: dict[str, np.ndarray],
    kl_per_dim: Sequence[float],
    key: jax.Array,
) -> dict[str, np.ndarray]:
    """Decoder means E[x|z] for reconstructions (z = posterior mean), prior samples and traversals.

    Traversal: start from the posterior mean of the first example and set z_d to
    linspace(-range, range, steps) for the dimensions with the largest KL.
    """
    ecfg = cfg.eval

    @jax.jit
    def decode(z: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, params)
        return model.mean_image(model.decode(z))

    n = min(ecfg.figure_images, len(x))
    latent_dim = post["mean"].shape[1]
    dims = np.argsort(-np.asarray(kl_per_dim), kind="stable")[: ecfg.traversal_dims]
    values = np.linspace(-ecfg.traversal_range, ecfg.traversal_range, ecfg.traversal_steps)
    grid = np.repeat(post["mean"][:1], len(dims) * len(values), axis=0).reshape(
        len(dims), len(values), latent_dim
    )
    for row, d in enumerate(dims):
        grid[row, :, d] = values
    prior_z = jax.random.normal(key, (ecfg.figure_images, latent_dim))
    return {
        "inputs": x[:n],
        "reconstructions": np.asarray(decode(jnp.asarray(post["mean"][:n]))),
        "prior_samples": np.asarray(decode(prior_z)),
        "traversals": np.asarray(decode(jnp.asarray(grid.reshape(-1, latent_dim)))).reshape(
            len(dims), len(values), *x.shape[1:]
        ),
        "traversal_dims": dims,
        "traversal_values": values,
    }


def hierarchical_figure_arrays(
    cfg: Any, graphdef: nnx.GraphDef, params: Any, x: np.ndarray, key: jax.Array
) -> dict[str, Any]:
    """Decoder means E[x|z_1] of a hierarchical model: posterior-mean reconstructions (every
    group at its posterior mean given the groups above), reconstructions keeping the top m
    groups of q(z|x) and drawing the rest from the prior (eval.keep_top_groups), and prior
    samples at each temperature of eval.sample_temperatures (one noise draw shared by all)."""
    ecfg = cfg.eval
    n = min(ecfg.figure_images, len(x))
    groups = len(latent_groups(cfg.model, x.shape[1:]) or ())
    units = latent_units(cfg.model, x.shape[1:])
    model = nnx.merge(graphdef, params)
    inputs = jnp.asarray(x[:n])
    k_keep, k_prior = figure_keys(key)

    @functools.partial(jax.jit, static_argnums=1)
    def reconstruct(eps: jax.Array, keep: int) -> jax.Array:
        return model.mean_image(model.reconstruct(inputs, eps, keep))

    @jax.jit
    def sample(eps: jax.Array, temperature: jax.Array) -> jax.Array:
        return model.mean_image(model.sample(eps, temperature))

    keep_eps = jax.random.normal(k_keep, (n, units))
    prior_eps = jax.random.normal(k_prior, (ecfg.figure_images, units))
    kept = [np.asarray(reconstruct(keep_eps, int(m))) for m in ecfg.keep_top_groups]
    return {
        "inputs": x[:n],
        "reconstructions": np.asarray(reconstruct(jnp.zeros((n, units)), groups)),
        "kept": np.stack([x[:n], *kept]),
        "kept_labels": ["input"] + [f"top {m} of {groups}" for m in ecfg.keep_top_groups],
        "temperatures": np.stack(
            [np.asarray(sample(prior_eps, jnp.float32(t))) for t in ecfg.sample_temperatures]
        ),
        "temperature_labels": [f"T = {t:g}" for t in ecfg.sample_temperatures],
    }


def mean_reconstructions(
    cfg: Any, graphdef: nnx.GraphDef, state: Any, x: np.ndarray, key: jax.Array
) -> np.ndarray:
    """E[x|z] with z at the posterior mean of each image, for every family, from the
    parameters evaluation scores (the EMA where eval.use_ema and the run keeps one): the
    notebook's reconstructions; scripts/evaluate.py draws the same."""
    params = eval_params(state, cfg.eval.use_ema)
    if latent_groups(cfg.model, x.shape[1:]) is not None:
        return hierarchical_figure_arrays(cfg, graphdef, params, x, key)["reconstructions"]
    mean, _ = nnx.merge(graphdef, params).encode(jnp.asarray(x))
    order = [0.0] * mean.shape[1]  # orders the traversals, which are not used here
    post = {"mean": np.asarray(mean)}
    return figure_arrays(cfg, graphdef, params, x, post, order, key)["reconstructions"]


def draw_hierarchical_figures(
    folder: Path,
    prefix: str,
    arrays: dict[str, Any],
    metrics: dict[str, Any],
    history: list[dict[str, Any]] | None,
) -> list[Path]:
    """Writes the hierarchical model's PNGs; returns their paths."""
    out = {
        "reconstructions": figures.reconstructions(arrays["inputs"], arrays["reconstructions"]),
        "top_groups": figures.image_rows(
            arrays["kept"],
            arrays["kept_labels"],
            "keep the top m groups of q(z|x), resample the rest",
        ),
        "prior_samples": figures.image_rows(
            arrays["temperatures"], arrays["temperature_labels"], "samples from the prior"
        ),
        "kl_per_group": figures.kl_per_group(
            metrics["kl_per_group"],
            metrics["active_units_per_group"],
            metrics["group_sizes"],
            history,
        ),
    }
    return save_figures(folder, prefix, out, history)


def save_figures(
    folder: Path, prefix: str, out: dict[str, Any], history: list[dict[str, Any]] | None
) -> list[Path]:
    """Writes each figure of out as <prefix>_<name>.png, and the training curves; their paths."""
    paths = []
    for name, fig in out.items():
        paths.append(folder / f"{prefix}_{name}.png")
        figures.save(fig, paths[-1])
    if history:
        paths.append(folder / "curves.png")
        figures.save(figures.curves(history), paths[-1])
    return paths


def draw_figures(
    folder: Path,
    prefix: str,
    arrays: dict[str, np.ndarray],
    metrics: dict[str, Any],
    history: list[dict[str, Any]] | None,
) -> list[Path]:
    """Writes the PNGs; returns their paths."""
    out = {
        "reconstructions": figures.reconstructions(arrays["inputs"], arrays["reconstructions"]),
        "prior_samples": figures.image_grid(arrays["prior_samples"], "samples from the prior"),
        "traversals": figures.traversals(
            arrays["traversals"], arrays["traversal_dims"], arrays["traversal_values"]
        ),
        "kl_per_dim": figures.kl_per_dim(
            metrics["kl_per_dim"], metrics["posterior_mean_var"], metrics["active_threshold"]
        ),
    }
    return save_figures(folder, prefix, out, history)


# --- Record.


def training_history(path: Path) -> list[dict[str, Any]] | None:
    """metrics.json's history for the curves figure; None (with a warning line) when it is
    missing or not a run record: the evaluation does not depend on it."""
    if not path.is_file():
        return None
    try:
        return list(read_record(path)["history"])
    except StorageError as e:
        print(f"warning: no curves figure: {e}", file=sys.stderr)
        return None


def evaluate_run(
    run_dir: Path, checkpoint_name: str, split: str, overrides: Sequence[str]
) -> tuple[dict[str, Any], list[Path]]:
    """Evaluates run_dir's model_<checkpoint_name> on split; writes eval/<ckpt>_<split>.json and
    the figures under <workdir>/figures/<run_id>/. Returns (record, written paths)."""
    tic = time.perf_counter()
    cfg = load_run_config(run_dir, overrides)
    run_dir = run_dir.resolve()  # its name is the run id, its grandparent the workdir
    ident = identity.read(run_dir)
    if ident.run is None:
        identity.legacy_notice(run_dir, "evaluated")
    keys = estimator_keys(cfg.training.seed)
    recorded = identity.recorded_data(run_dir)
    splits = load_splits(identity.pinned_data(cfg, recorded).data)
    identity.check_data(run_dir, recorded, splits.info)
    x = getattr(splits, split)
    _, total_steps = planned_steps(cfg.training, len(splits.train))
    graphdef, abstract = abstract_train_state(cfg, splits.train.shape[1:], total_steps)
    # Every local device: the parameters replicated, each batch split over the devices.
    mesh = make_mesh(jax.local_devices())
    check_eval_batch(cfg.eval.batch_size, mesh)
    owner = checkpoint.Owner(ident.run, ident.legacy)
    state, meta = restore_state(run_dir, checkpoint_name, abstract, replicated(mesh), owner)
    # After the structure check, which names the array a model edit changes.
    identity.check_config(run_dir, ident)

    params = eval_params(state, cfg.eval.use_ema)
    metrics, post = compute_metrics(cfg, graphdef, params, x, keys, mesh)
    arrays = None
    hierarchical = "group_sizes" in metrics
    if cfg.eval.figures and hierarchical:
        arrays = hierarchical_figure_arrays(cfg, graphdef, params, x, keys["figures"])
    elif cfg.eval.figures:
        arrays = figure_arrays(
            cfg, graphdef, params, x, post, metrics["kl_per_dim"], keys["figures"]
        )
    record = {
        "run_id": run_dir.name,
        "run": ident.run,  # the run identity read (None: a legacy run)
        "checkpoint": checkpoint_name,
        "step": int(state.step),
        "split": split,
        "config_hash": config_hash(cfg),
        **metrics,
        "eval_config": {k: v for k, v in cfg.eval.items()},
    }
    if checkpoint_name == "best" and "val" in meta:
        record["logged_val_elbo"] = meta["val"]["elbo"]
    record["seconds"] = time.perf_counter() - tic

    written = [run_dir / "eval" / f"{checkpoint_name}_{split}.json"]
    if identity.read(run_dir).run != ident.run:  # replaced (--overwrite) while evaluating
        raise RunDirError(
            f"run {run_dir.name} was replaced while it was being evaluated (its provenance.json now "
            f"names another run than {ident.run}); nothing written; evaluate it again"
        )
    history = training_history(run_dir / "metrics.json") if arrays is not None else None
    try:
        atomic_write_json(written[0], record)
        if arrays is not None:
            folder = run_dir.parent.parent / "figures" / run_dir.name
            draw = draw_hierarchical_figures if hierarchical else draw_figures
            written += draw(folder, f"{checkpoint_name}_{split}", arrays, metrics, history)
    except OSError as e:  # read-only or full disk: one line, exit status 4
        raise StorageError(f"cannot write the evaluation of {run_dir}: {e}") from e
    return record, written
