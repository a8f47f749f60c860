"""Tables and figures of the MNIST experiments from their run folders.

python scripts/experiments/report.py WORKDIR [--figures=DIR]

Reads WORKDIR/checkpoints/<run>/{metrics.json, eval/*.json, config.yaml} as written by
scripts/experiments/mnist.sh and prints one markdown table per experiment (missing runs are
left out); with --figures also draws the learning curve, latent-dimension and regularization
figures there. Nothing is recomputed: every number is one the runs recorded (kl_mass_units is
taken from the evaluation's KL per dimension where an older record lacks it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from src.evaluation.metrics import kl_mass_units  # noqa: E402


def load(run: Path, name: str) -> dict[str, Any] | None:
    path = run / "eval" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def train_minutes(workdir: Path, run_id: str) -> float:
    """Wall time of a run's training sessions (runs.csv start/end pairs), in minutes."""
    import csv
    from datetime import datetime

    total = 0.0
    with open(workdir / "runs.csv") as f:
        for row in csv.DictReader(f):
            if row["run_id"] == run_id and row["event"] == "end" and row["ended_at"]:
                start, end = (datetime.fromisoformat(row[k]) for k in ("started_at", "ended_at"))
                total += (end - start).total_seconds()
    return total / 60


def row(record: dict[str, Any]) -> dict[str, Any]:
    kl = np.asarray(record["kl_per_dim"])
    return {
        "nll": record["iwae_nll"],
        "k": record["iwae_samples"],
        "elbo": record["elbo"],
        "kl": record["kl"],
        "au": record["active_units"],
        "kl99": record.get("kl_mass_units", kl_mass_units(kl, 0.99)),
        "mi": record["mutual_info"],
        "eval_min": record["seconds"] / 60,
        "step": record["step"],
    }


def fmt(r: dict[str, Any]) -> str:
    return (
        f"{r['nll']:.2f} | {-r['elbo']:.2f} | {r['kl']:.2f} | {r['au']} | {r['kl99']} | "
        f"{r['mi']:.2f}"
    )


HEAD = "| test NLL | test -ELBO | KL | active units (0.01) | dims with 99 % of KL | MI |"


def table(title: str, columns: str, rows: list[str]) -> None:
    if not rows:
        return
    print(f"\n### {title}\n")
    print(f"| {columns} " + HEAD)
    print("| --- " * (columns.count("|") + 1) + "| --- " * 6 + "|")
    for r in rows:
        print(r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--figures", type=Path)
    args = parser.parse_args()
    runs = args.workdir / "checkpoints"

    burda = []
    for run_id, name, label in (
        ("burda-k1-s42", "nll5000_e20", "VAE (k = 1), 20 epochs"),
        ("burda-k5-s42", "nll5000_e20", "IWAE k = 5, 20 epochs"),
        ("burda-k1-e5-s42", "nll1000_e5", "VAE (k = 1), 5 epochs"),
        ("burda-k5-e5-s42", "nll1000_e5", "IWAE k = 5, 5 epochs"),
        ("burda-k50-e5-s42", "nll1000_e5", "IWAE k = 50, 5 epochs"),
    ):
        record = load(runs / run_id, name)
        if record:
            r = row(record)
            minutes = train_minutes(args.workdir, run_id)
            burda.append(f"| {label} | {r['k']} | {minutes:.1f} | " + fmt(r) + " |")
    table("012 Burda et al. architecture", "model | k (eval) | train min", burda)

    curve = []
    points: list[tuple[int, float]] = []
    for e in (1, 2, 5, 10, 20, 50, 100, 200):
        record = load(runs / "vae-s42", f"nll500_e{e}")
        if record:
            r = row(record)
            points.append((e, r["nll"]))
            curve.append(f"| {e} | {r['step']} | {r['k']} | " + fmt(r) + " |")
    for e in (50, 200):
        final = load(runs / "vae-s42", f"nll5000_e{e}")
        if final:
            r = row(final)
            curve.append(f"| {e} | {r['step']} | {r['k']} | " + fmt(r) + " |")
    table(
        "011 standard VAE 784-500-20, seed 42, test NLL against epochs", "epochs | step | k", curve
    )

    seeds = []
    values: dict[int, list[float]] = {500: [], 5000: []}
    for seed in (42, 43, 44):
        for k in (500, 5000):
            record = load(runs / f"vae-s{seed}", f"nll{k}_e50")
            if record:
                r = row(record)
                values[k].append(r["nll"])
                seeds.append(f"| {seed} | {k} | " + fmt(r) + " |")
    for k, v in values.items():
        if len(v) > 1:
            seeds.append(
                f"| mean +- sd ({len(v)} seeds) | {k} | {statistics.mean(v):.2f} +- "
                f"{statistics.stdev(v):.2f} | | | | | |"
            )
    table("011 standard VAE 784-500-20, 50 epochs, seeds", "seed | k", seeds)

    latent = []
    dims: list[tuple[int, dict[str, Any]]] = []
    for d in (2, 5, 10, 20, 50, 100):
        run_id, name = (f"latent-d{d}", "nll500_e10") if d != 20 else ("vae-s42", "nll500_e10")
        record = load(runs / run_id, name)
        if record:
            r = row(record)
            dims.append((d, r))
            latent.append(f"| {d} | " + fmt(r) + " |")
    table("014 latent_dim, 784-500-d, 10 epochs, k = 500", "latent_dim", latent)

    reg = []
    for run_id, name, label in (
        ("vae-s42", "nll500_e10", "beta 1 (plain)"),
        ("reg-beta0.5", "nll500_e10", "beta 0.5"),
        ("reg-beta2", "nll500_e10", "beta 2"),
        ("reg-beta4", "nll500_e10", "beta 4"),
        ("reg-warmup", "nll500_e10", "linear KL warm-up, 4210 steps (10 epochs)"),
        ("reg-freebits", "nll500_e10", "free bits 0.25 nats/dim"),
    ):
        record = load(runs / run_id, name)
        if record:
            reg.append(f"| {label} | " + fmt(row(record)) + " |")
    table("013 regularization, 784-500-20, 10 epochs, k = 500", "setting", reg)

    width = []
    for h in (100, 200, 500, 1000):
        run_id = f"width-h{h}" if h != 500 else "vae-s42"
        record = load(runs / run_id, "nll500_e10")
        if record:
            params = json.loads((runs / run_id / "metrics.json").read_text())["param_count"]
            width.append(f"| {h} | {params:,} | " + fmt(row(record)) + " |")
    table("015 hidden width, 784-h-20, 10 epochs, k = 500", "hidden | parameters", width)

    fashion = []
    for name in ("nll500_e50", "nll5000_e50"):
        record = load(runs / "fashion-vae-s42", name)
        if record:
            fashion.append(f"| {name} | " + fmt(row(record)) + " |")
    table("016 Fashion-MNIST, 784-500-20, 50 epochs", "estimate", fashion)

    families = []
    for data, prefix in (("MNIST", "family"), ("Fashion-MNIST", "fashion-family")):
        for model in ("mlp", "conv", "transformer"):
            for seed in (42, 43, 44):
                run_id = f"{prefix}-{model}-s{seed}"
                for name in ("nll1000_e20", "nll5000_e20"):
                    record = load(runs / run_id, name)
                    if record:
                        r = row(record)
                        params = json.loads((runs / run_id / "metrics.json").read_text())
                        families.append(
                            f"| {data} | {model} | {seed} | {params['param_count']:,} | "
                            f"{train_minutes(args.workdir, run_id):.1f} | {r['k']} | "
                            + fmt(r)
                            + " |"
                        )
    table(
        "017 families at about 229k parameters, 20 epochs",
        "data | family | seed | parameters | train min | k",
        families,
    )

    collapse = []
    for label, run_id in (
        ("none (017)", "family-transformer-s42"),
        ("linear warm-up over 10 epochs", "family-transformer-warmup-s42"),
        ("free bits 0.25 nats", "family-transformer-freebits-s42"),
    ):
        record = load(runs / run_id, "nll1000_e20")
        if record:
            minutes = train_minutes(args.workdir, run_id)
            collapse.append(f"| {label} | {minutes:.1f} | " + fmt(row(record)) + " |")
    table(
        "018 transformer family, KL treatments, 20 epochs, k = 1000",
        "KL treatment | train min",
        collapse,
    )

    if args.figures:
        draw(args.figures, points, dims)
        kl = {}
        for model in ("mlp", "conv", "transformer"):
            record = load(runs / f"family-{model}-s42", "nll1000_e20")
            if record:
                kl[model] = sorted(record["kl_per_dim"], reverse=True)
        draw_families(args.figures, kl)


def draw(folder: Path, points: list[tuple[int, float]], dims: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    if points:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-")
        ax.set_xscale("log")
        ax.set_xlabel("epochs")
        ax.set_ylabel("test NLL (nats, IWAE k = 500)")
        ax.set_title("MNIST VAE 784-500-20, seed 42")
        fig.tight_layout()
        fig.savefig(folder / "mnist_vae_curve.png", dpi=120)
    if dims:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        d = [x[0] for x in dims]
        ax.plot(d, [x[1]["au"] for x in dims], "o-", label="active units (Var > 0.01)")
        ax.plot(d, [x[1]["kl99"] for x in dims], "s-", label="dims with 99 % of the KL")
        ax.plot(d, d, ":", color="grey", label="latent_dim")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("latent_dim")
        ax.set_ylabel("dimensions")
        ax.legend(fontsize=7)
        ax.set_title("MNIST, 784-500-d, 10 epochs")
        fig.tight_layout()
        fig.savefig(folder / "mnist_latent_dims.png", dpi=120)


def draw_families(folder: Path, kl: dict[str, list[float]]) -> None:
    """KL per latent dimension (sorted) of the three families of Experiment 017."""
    if not kl:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for model, values in kl.items():
        ax.plot(range(1, len(values) + 1), values, "o-", markersize=3, label=model)
    ax.set_yscale("log")
    ax.set_xlabel("latent dimension (sorted by KL)")
    ax.set_ylabel("test KL per dimension (nats)")
    ax.set_title("MNIST families, ~229k parameters, 20 epochs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "mnist_families_kl.png", dpi=120)


if __name__ == "__main__":
    main()
