"""Evaluation figures as matplotlib Figures on the Agg canvas (no pyplot, no global state)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from src.utils.io import atomic_write_bytes

GRID_COLUMNS = 8  # images per row in image grids (layout only)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _show(ax: Any, image: np.ndarray) -> None:
    """image: [H, W, C] in [0, 1]; one channel is drawn in grey."""
    image = np.clip(image, 0.0, 1.0)
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def save(fig: Figure, path: Path) -> None:
    """PNG, written atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


def image_grid(images: np.ndarray, title: str) -> Figure:
    """images: [N, H, W, C] in rows of GRID_COLUMNS."""
    cols = min(GRID_COLUMNS, len(images))
    rows = -(-len(images) // cols)
    fig = _new_figure(1.2 * cols, 1.2 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            _show(ax, images[i])
        else:
            ax.axis("off")
    fig.suptitle(title)
    return fig


def reconstructions(inputs: np.ndarray, recons: np.ndarray) -> Figure:
    """Inputs (top row) above their reconstructions E[x | z = mean(x)] (bottom row)."""
    n = len(inputs)
    fig = _new_figure(1.1 * n, 2.6)
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        _show(axes[0, i], inputs[i])
        _show(axes[1, i], recons[i])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("recon.")
    return fig


def traversals(images: np.ndarray, dims: np.ndarray, values: np.ndarray) -> Figure:
    """images: [len(dims), len(values), H, W, C]; row r varies z_{dims[r]} over values."""
    rows, cols = images.shape[:2]
    fig = _new_figure(1.1 * cols, 1.1 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            _show(axes[r, c], images[r, c])
            if r == rows - 1:
                axes[r, c].set_xlabel(f"{values[c]:+.1f}")
        axes[r, 0].set_ylabel(f"z{dims[r]}")
    fig.suptitle("latent traversals (largest KL first)")
    return fig


def kl_per_dim(kl: Sequence[float], mean_var: Sequence[float], threshold: float) -> Figure:
    """Left: KL per dimension, sorted, active units dark. Right: Cov_x(E_q[z_d|x]) in the same
    order, on a log scale, with the active-unit threshold as a line."""
    kl_arr, var_arr = np.asarray(kl), np.asarray(mean_var)
    order = np.argsort(-kl_arr, kind="stable")
    active = var_arr[order] > threshold
    colors = np.where(active, "tab:blue", "lightgray")
    labels = [str(d) for d in order]
    fig = _new_figure(max(6.0, 0.35 * len(order) + 2.0), 5.0)
    ax_kl, ax_var = fig.subplots(1, 2)
    ax_kl.bar(labels, kl_arr[order], color=colors)
    ax_kl.set_xlabel("latent dimension (sorted by KL)")
    ax_kl.set_ylabel("KL(q(z_d|x) || p(z_d)) [nats]")
    ax_kl.set_title(f"KL per dimension; {int(active.sum())} active (dark)")
    ax_var.bar(labels, np.maximum(var_arr[order], 1e-12), color=colors)
    ax_var.axhline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
    ax_var.set_yscale("log")
    ax_var.set_xlabel("latent dimension (same order)")
    ax_var.set_ylabel("Cov_x(E_q[z_d | x])")
    ax_var.set_title("activity")
    ax_var.legend()
    for ax in (ax_kl, ax_var):
        ax.tick_params(axis="x", labelsize=7)
    return fig


def curves(history: list[dict[str, Any]]) -> Figure:
    """ELBO, KL and reconstruction against step for the train and val records of metrics.json."""
    fig = _new_figure(12.0, 3.6)
    axes = fig.subplots(1, 3)
    for ax, key in zip(axes, ("elbo", "kl", "recon"), strict=True):
        for split, style in (("train", "-"), ("val", "o-")):
            records = [r for r in history if r["split"] == split and key in r]
            if records:
                ax.plot([r["step"] for r in records], [r[key] for r in records], style, label=split)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{key} [nats per example]")
        ax.legend()
    fig.suptitle("training curves (metrics.json)")
    return fig


def image_rows(rows: np.ndarray, labels: Sequence[str], title: str) -> Figure:
    """rows: [R, N, H, W, C]; row r is labelled labels[r]."""
    n_rows, n_cols = rows.shape[:2]
    fig = _new_figure(1.1 * n_cols + 0.6, 1.1 * n_rows + 0.6)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            _show(axes[r, c], rows[r, c])
        axes[r, 0].set_ylabel(labels[r], fontsize=8)
    fig.suptitle(title)
    return fig


def kl_per_group(
    kl: Sequence[float],
    active: Sequence[int],
    sizes: Sequence[int],
    history: list[dict[str, Any]] | None,
) -> Figure:
    """Left: KL per latent group (z_1 at the bottom of the hierarchy) of the evaluated split,
    labelled with its active units out of its units. Right: the train records' KL per group
    against step (log scale), so a collapsed upper group shows as a line falling to zero."""
    fig = _new_figure(12.0, 4.2)
    ax_bar, ax_curve = fig.subplots(1, 2)
    names = [f"z{i + 1}" for i in range(len(kl))]
    ax_bar.bar(names, kl, color="tab:blue")
    for i, (value, a, n) in enumerate(zip(kl, active, sizes, strict=True)):
        ax_bar.annotate(f"{a}/{n}", (i, value), ha="center", va="bottom", fontsize=7)
    ax_bar.set_xlabel("latent group (z1 nearest the data)")
    ax_bar.set_ylabel("KL [nats per example]")
    ax_bar.set_title("KL per group (active units / units)")
    records = [r for r in history or [] if r["split"] == "train" and "kl_per_group" in r]
    if records:
        steps = [r["step"] for r in records]
        values = np.maximum(np.asarray([r["kl_per_group"] for r in records], np.float64), 1e-6)
        cmap = matplotlib_colormap(len(kl))
        for g in range(values.shape[1]):
            ax_curve.plot(steps, values[:, g], color=cmap[g], label=names[g])
        ax_curve.set_yscale("log")
        ax_curve.legend(fontsize=7, ncol=max(1, len(kl) // 8))
    ax_curve.set_xlabel("step")
    ax_curve.set_ylabel("KL [nats per example] (train records)")
    ax_curve.set_title("KL per group over training")
    return fig


def matplotlib_colormap(n: int) -> list[Any]:
    """n colours from bottom (dark) to top (light) of the hierarchy."""
    from matplotlib import colormaps

    return [colormaps["viridis"](i / max(1, n - 1)) for i in range(n)]
