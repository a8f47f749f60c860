"""The validation pass: single-sample ELBO, KL per dimension and active units over a split.

Training validates with it and scripts/evaluate.py starts from it, so --split=val on
model_best reproduces the logged validation numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from src.data.pipeline import padded_batches
from src.training.keys import batch_key


def active_units(posterior_means: np.ndarray, threshold: float) -> int:
    """Number of dimensions d with Cov_x(E_q[z_d | x]) > threshold (Burda et al. 2016, Sec. 5.2).

    Args:
      posterior_means: [num_examples, D], the encoder means over a dataset.
    """
    return int(np.sum(np.var(posterior_means.astype(np.float64), axis=0) > threshold))


def on_devices(batch: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host batch (held whole by every process) split over sharding's devices; each process
    places only the rows of its own devices."""
    return jax.make_array_from_callback(batch.shape, sharding, lambda index: batch[index])


def evaluate_split(
    eval_step: Callable[..., dict[str, Any]],
    params: Any,
    x: np.ndarray,
    batch_size: int,
    key: jax.Array,
    active_threshold: float,
    batch_sharding: jax.sharding.Sharding,
) -> dict[str, Any]:
    """Single-sample ELBO over all of x (nats per example) with a fixed key per batch.

    Each batch is split over batch_sharding's devices (eval_step must return replicated
    outputs). The noise of batch i comes from fold_in(key, i), so the same params, data, batch
    size and key give the same numbers on any number of devices, up to the order of the sums.
    """
    batches, masks = padded_batches(x, batch_size)
    recon_sum = 0.0
    kl_sum: Any = 0.0
    means = []
    for i, (batch, mask) in enumerate(zip(batches, masks, strict=True)):
        key_i = batch_key(key, i)
        placed = on_devices(batch, batch_sharding), on_devices(mask, batch_sharding)
        out = jax.device_get(eval_step(params, *placed, key_i))
        recon_sum += float(out["recon_sum"])
        kl_sum = kl_sum + np.asarray(out["kl_per_dim_sum"], np.float64)
        means.append(np.asarray(out["mean"])[mask > 0])
    n = len(x)
    kl_per_dim = kl_sum / n
    recon, kl = recon_sum / n, float(kl_per_dim.sum())
    return {
        "elbo": -(recon + kl),
        "recon": recon,
        "kl": kl,
        "kl_per_dim": kl_per_dim.tolist(),
        "active_units": active_units(np.concatenate(means), active_threshold),
        "num_examples": n,
    }
