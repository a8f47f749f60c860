"""The validation pass: single-sample ELBO, KL per dimension and active units over a split.

Training validates with it and scripts/evaluate.py starts from it, so --split=val on
model_best reproduces the logged validation numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def kl_mass_units(kl_per_dim: np.ndarray, share: float) -> int:
    """The fewest latent dimensions that together carry `share` of the total KL.

    A scale-free count of used dimensions: unlike the variance threshold of active_units,
    which counts a nearly collapsed dimension as soon as Var_x(E_q[z_d|x]) > threshold, it asks
    how many dimensions the information sits in (0 when the total KL is 0)."""
    kl = np.sort(np.maximum(np.asarray(kl_per_dim, np.float64), 0.0))[::-1]
    total = kl.sum()
    if total <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(kl), share * total * (1 - 1e-12)) + 1)


def combine_moments(
    a: tuple[float, np.ndarray, np.ndarray], b: tuple[float, np.ndarray, np.ndarray]
) -> tuple[float, np.ndarray, np.ndarray]:
    """(count, mean, M2) of two sets of rows from each set's (Chan et al. 1979): with
    delta = mean_b - mean_a, mean = mean_a + delta n_b / n, M2 = M2_a + M2_b + delta^2 n_a n_b / n.
    The variance of the union is M2 / n."""
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    n = n_a + n_b
    if n_b == 0:
        return a
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + np.square(delta) * (n_a * n_b / n)


def per_group(
    kl_per_unit: np.ndarray,
    mean_var: np.ndarray,
    groups: Sequence[int],
    threshold: float,
    kl_mass_share: float,
) -> dict[str, Any]:
    """The per-group metrics of a hierarchical model (z_1 first): kl_per_group (nats),
    active_units_per_group (units with Var_x(E_q[z_u|x]) > threshold), kl_mass_units_per_group
    (kl_mass_units within each group); a conv group's units are its (position, channel) pairs."""
    bounds = np.cumsum([0, *groups])
    parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return {
        "kl_per_group": [float(kl_per_unit[p].sum()) for p in parts],
        "active_units_per_group": [int(np.sum(mean_var[p] > threshold)) for p in parts],
        "kl_mass_units_per_group": [kl_mass_units(kl_per_unit[p], kl_mass_share) for p in parts],
    }


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
    *,
    groups: Sequence[int] | None,
    kl_mass_share: float,
) -> dict[str, Any]:
    """Single-sample ELBO over all of x (nats per example) with a fixed key per batch.

    groups: the units of each latent group of a hierarchical model (its eval step returns
    posterior-mean moments instead of the means); the record then has the per-group metrics
    of per_group, and no per-unit KL. None for the one-group families (kl_mass_share unused).

    Each batch is split over batch_sharding's devices (eval_step must return replicated
    outputs). The noise of batch i comes from fold_in(key, i), so the same params, data, batch
    size and key give the same numbers on any number of devices, up to the order of the sums.
    """
    batches, masks = padded_batches(x, batch_size)
    recon_sum = 0.0
    kl_sum: Any = 0.0
    means = []
    moments: tuple[float, Any, Any] = (0.0, 0.0, 0.0)
    for i, (batch, mask) in enumerate(zip(batches, masks, strict=True)):
        key_i = batch_key(key, i)
        placed = on_devices(batch, batch_sharding), on_devices(mask, batch_sharding)
        out = jax.device_get(eval_step(params, *placed, key_i))
        recon_sum += float(out["recon_sum"])
        kl_sum = kl_sum + np.asarray(out["kl_per_dim_sum"], np.float64)
        if groups is None:
            means.append(np.asarray(out["mean"])[mask > 0])
        else:
            batch_moments = (float(out["mean_count"]), out["mean_mean"], out["mean_m2"])
            f64 = tuple(np.asarray(v, np.float64) for v in batch_moments)
            moments = combine_moments(moments, (batch_moments[0], f64[1], f64[2]))
    n = len(x)
    kl_per_dim = kl_sum / n
    recon, kl = recon_sum / n, float(kl_per_dim.sum())
    if groups is not None:
        mean_var = moments[2] / moments[0]
        return {
            "elbo": -(recon + kl),
            "recon": recon,
            "kl": kl,
            "active_units": int(np.sum(mean_var > active_threshold)),
            **per_group(kl_per_dim, mean_var, groups, active_threshold, kl_mass_share),
            "num_examples": n,
        }
    return {
        "elbo": -(recon + kl),
        "recon": recon,
        "kl": kl,
        "kl_per_dim": kl_per_dim.tolist(),
        "active_units": active_units(np.concatenate(means), active_threshold),
        "num_examples": n,
    }
