"""Tables and figures of the EXPERIMENTS.md entries from finished sweeps (reads records, no training).

python scripts/plot_experiments.py --experiment=002 --workdir=/work/exp_results [--out=docs/figures]

Prints a markdown table per swept setting (mean +- sample sd over seeds, min-max of active units,
wall time) and writes docs/figures/<NNN>_<name>.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data.pipeline import load_splits, steps_per_epoch  # noqa: E402
from src.evaluation import figures  # noqa: E402
from src.evaluation.evaluate import abstract_train_state, restore_state  # noqa: E402
from src.evaluation.ppca import (  # noqa: E402
    gaussian_log_likelihood,
    ppca_fit,
    ppca_log_likelihood,
)
from src.experiments.summary import wall_seconds  # noqa: E402
from src.training.run.run_index import FILE_NAME, read_rows  # noqa: E402
from src.training.run.rundir import run_paths  # noqa: E402
from src.utils.config import load_saved_config  # noqa: E402
from src.utils.io import read_json  # noqa: E402

# experiment -> (sweep name, swept keys, figure name)
SWEEPS = {
    "002": ("exp002-beta", ["training.kl.beta"], "beta"),
    "003": ("exp003-latent", ["model.latent_dim"], "latent_dim"),
    "004": ("exp004-klreg", ["training.kl.warmup", "training.kl.free_bits"], "kl_regularizers"),
    "005": ("exp005-families", ["model.type"], "families"),
    "006": ("exp006-linear", [], "linear_ppca"),
}
LONG_006 = "exp006-linear-long"  # the 4x longer arm of Experiment 006, if it has run
USED_KL = 0.1  # nats: a dimension "carries information" above this KL (reported next to AU)


def load_runs(workdir: Path, sweep: str, keys: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per completed trial: swept value, seed, final val metrics, eval record, wall_s."""
    spec = read_json(workdir / "sweeps" / sweep / "trials.json")
    index = read_rows(workdir / FILE_NAME)
    runs = []
    for trial in spec["trials"]:
        paths = run_paths(workdir, trial["run_id"])
        if not paths.metrics.is_file():
            continue
        record = read_json(paths.metrics)
        if record.get("status") != "completed":
            continue
        prov = read_json(paths.provenance)
        eval_path = paths.run_dir / "eval" / "last_test.json"  # the final step, as the table
        runs.append(
            {
                "run_id": trial["run_id"],
                "value": label(trial["params"], keys),
                "seed": trial["params"]["training.seed"],
                "val": record["final"]["val"],
                "params": record["param_count"],
                "test": read_json(eval_path) if eval_path.is_file() else None,
                "wall_s": wall_seconds(index, trial["run_id"]),
                "commit": prov["git"]["commit"][:7] + ("-dirty" if prov["git"]["dirty"] else ""),
            }
        )
    return runs


def label(params: dict[str, Any], keys: Sequence[str]) -> Any:
    """The swept value itself for one key, else 'leaf=value, ...' (seeds are not swept keys)."""
    if len(keys) == 1:
        return params[keys[0]]
    return ", ".join(f"{k.split('.')[-1]}={params[k]}" for k in keys) or "-"


def grouped(runs: Sequence[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run["value"], []).append(run)
    return groups


def mean_sd(values: Sequence[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def used_dims(kl_per_dim: Sequence[float]) -> int:
    return int(np.sum(np.asarray(kl_per_dim) > USED_KL))


def table(runs: Sequence[dict[str, Any]], key: str) -> str:
    """Markdown: one row per swept value, mean +- sd over seeds (n seeds)."""
    has_test = all(r["test"] is not None for r in runs)
    head = [key, "seeds", "val ELBO", "val recon", "val KL", "AU (min-max)", "KL>0.1 (min-max)"]
    if has_test:
        head += [f"test IWAE NLL (k={runs[0]['test']['iwae_samples']})", "test MI"]
    head += ["params", "wall s (mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for value, group in grouped(runs).items():
        au = [r["val"]["active_units"] for r in group]
        used = [used_dims(r["val"]["kl_per_dim"]) for r in group]
        row = [
            str(value),
            ",".join(str(r["seed"]) for r in group),
            mean_sd([r["val"]["elbo"] for r in group]),
            mean_sd([r["val"]["recon"] for r in group]),
            mean_sd([r["val"]["kl"] for r in group]),
            f"{statistics.mean(au):.1f} ({min(au)}-{max(au)})",
            f"{statistics.mean(used):.1f} ({min(used)}-{max(used)})",
        ]
        if has_test:
            row += [
                mean_sd([r["test"]["iwae_nll"] for r in group]),
                mean_sd([r["test"]["mutual_info"] for r in group]),
            ]
        walls = [r["wall_s"] for r in group if r["wall_s"] is not None]
        row += [f"{group[0]['params']:,}", f"{statistics.mean(walls):.0f}" if walls else "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def sweep_figure(runs: Sequence[dict[str, Any]], key: str, title: str) -> Any:
    """Left: sorted KL per dimension (mean over seeds) per setting; right: AU and KL>0.1 dims."""
    fig = new_figure(10.0, 3.8)
    left, right = fig.subplots(1, 2)
    groups = grouped(runs)
    values = list(groups)
    colours = [figures_cmap(i, len(values)) for i in range(len(values))]
    for colour, value in zip(colours, values, strict=True):
        kls = [np.sort(r["val"]["kl_per_dim"])[::-1] for r in groups[value]]
        left.plot(np.arange(1, len(kls[0]) + 1), np.mean(kls, 0), "o-", ms=3, color=colour)
        left.plot([], [], "o-", color=colour, label=str(value))
    left.axhline(USED_KL, color="grey", ls=":", lw=1)
    left.set_yscale("log")
    left.set_xlabel("latent dimension, sorted by KL")
    left.set_ylabel("val KL per dimension (nats), mean over seeds")
    left.legend(fontsize=7)
    x = np.arange(len(values))
    for name, fn, marker in (
        ("active units (Var E[z|x] > 0.01)", lambda r: r["val"]["active_units"], "o"),
        (f"dims with KL > {USED_KL} nats", lambda r: used_dims(r["val"]["kl_per_dim"]), "s"),
    ):
        per = [[fn(r) for r in groups[v]] for v in values]
        mean = np.array([np.mean(p) for p in per])
        err = np.array([[mean[i] - min(p), max(p) - mean[i]] for i, p in enumerate(per)]).T
        line = "-" if all(isinstance(v, (int, float)) for v in values) else "none"
        right.errorbar(x, mean, yerr=err, marker=marker, ls=line, capsize=3, label=name)
    right.set_xticks(x, [str(v).replace(", ", "\n") for v in values], fontsize=8)
    right.set_xlabel(key)
    right.set_ylabel("dimensions (mean, min-max over seeds)")
    right.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def linear_vae_marginal(run_dir: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(b [D], W [D, q], sigma) of a trained linear VAE (model_last), p(x) = N(b, W W^T + s^2 I).

    The decoder is affine, so decoding z = 0 gives b and z = e_j gives b + W[:, j].
    """
    cfg = load_saved_config(run_dir / "config.yaml", [])
    splits = load_splits(cfg.data)
    total = cfg.training.epochs * steps_per_epoch(len(splits.train), cfg.training.batch_size)
    graphdef, abstract = abstract_train_state(cfg, splits.train.shape[1:], total)
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    state, _ = restore_state(run_dir, "last", abstract, sharding)
    model = nnx.merge(graphdef, state.params)
    q = cfg.model.latent_dim
    z = jnp.concatenate([jnp.zeros((1, q)), jnp.eye(q)])
    out = np.asarray(model.decode(z), np.float64).reshape(q + 1, -1)
    return out[0], (out[1:] - out[0]).T, float(model.likelihood.scale())


def ppca_comparison(workdir: Path, runs: Sequence[dict[str, Any]]) -> tuple[str, Any]:
    """Experiment 006: the runs' val ELBO / test IWAE and KL per dimension against PPCA."""
    cfg = load_saved_config(run_paths(workdir, runs[0]["run_id"]).config, [])
    splits = load_splits(cfg.data)
    q, k = cfg.model.latent_dim, cfg.data.synthetic.latent_dim
    threshold = cfg.eval.active_threshold
    lines = [
        "| model | train log-lik | val log-lik | test log-lik | val ELBO | sigma | active units "
        "| val KL per dim (sorted) |",
        "|" + " --- |" * 8,
    ]
    fits = {f"PPCA q={n}": ppca_fit(splits.train, n, threshold) for n in (k, q)}
    for name, fit in fits.items():
        lines.append(
            f"| {name} (closed form, fit on train) | {fit['log_likelihood']:.3f} "
            f"| {ppca_log_likelihood(splits.val, fit):.3f} "
            f"| {ppca_log_likelihood(splits.test, fit):.3f} | = log-lik "
            f"| {np.sqrt(fit['sigma2']):.4f} "
            f"| {fit['active_units']} | {np.round(fit['kl_per_dim'], 3).tolist()} |"
        )
    for r in runs:
        b, w, sigma = linear_vae_marginal(run_paths(workdir, r["run_id"]).run_dir)
        cov = w @ w.T + sigma**2 * np.eye(len(b))
        lls = [
            gaussian_log_likelihood(getattr(splits, n), b, cov) for n in ("train", "val", "test")
        ]
        kl = np.round(np.sort(r["val"]["kl_per_dim"])[::-1], 3).tolist()
        lines.append(
            f"| linear VAE {r['arm']}, seed {r['seed']} | "
            + " | ".join(f"{v:.3f}" for v in lls)
            + f" | {r['val']['elbo']:.3f} | {sigma:.4f} | {r['val']['active_units']} | {kl} |"
        )
    fig = new_figure(6.0, 3.8)
    ax = fig.subplots()
    dims = np.arange(1, q + 1)
    ax.plot(dims, fits[f"PPCA q={q}"]["kl_per_dim"], "k*-", ms=9, label=f"PPCA optimum, q={q}")
    for r in runs:
        kls = np.sort(r["val"]["kl_per_dim"])[::-1]
        style = "o--" if r["arm"] == "100 ep" else "s-"
        ax.plot(dims, kls, style, ms=4, label=f"linear VAE {r['arm']}, seed {r['seed']}")
    ax.axvline(k + 0.5, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel(f"latent dimension, sorted by KL (true k = {k})")
    ax.set_ylabel("val KL per dimension (nats)")
    ax.legend(fontsize=7)
    return "\n".join(lines), fig


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figures_cmap(i: int, n: int) -> Any:
    return colormaps["viridis"](i / max(n - 1, 1))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", required=True, choices=sorted(SWEEPS))
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--out", default=Path("docs/figures"), type=Path)
    parser.add_argument(
        "--beta_workdir",
        type=Path,
        help="003 only: workdir of Experiment 002, whose beta = 1 runs are the latent_dim 16 point",
    )
    args = parser.parse_args(argv)
    sweep, keys, name = SWEEPS[args.experiment]
    key = " / ".join(keys) or "run"
    runs = load_runs(args.workdir, sweep, keys)
    if args.experiment == "003" and args.beta_workdir:
        beta = load_runs(args.beta_workdir, SWEEPS["002"][0], SWEEPS["002"][1])
        runs += [{**r, "value": 16} for r in beta if r["value"] == 1.0]
        runs.sort(key=lambda r: (r["value"], r["seed"]))
    print(f"{len(runs)} completed runs; commits: {sorted({r['commit'] for r in runs})}")
    path = args.out / f"{args.experiment}_{name}.png"
    if args.experiment == "006":
        runs = [{**r, "arm": "100 ep"} for r in runs]
        if (args.workdir / "sweeps" / LONG_006).is_dir():
            runs += [{**r, "arm": "400 ep"} for r in load_runs(args.workdir, LONG_006, keys)]
        text, fig = ppca_comparison(args.workdir, runs)
        print(text)
        figures.save(fig, path)
    else:
        print(table(runs, key))
        title = f"Experiment {args.experiment}: digits, val split"
        figures.save(sweep_figure(runs, key, title), path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
