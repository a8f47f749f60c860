"""Summaries of a posterior over a split: the dimensions that carry the KL.

The validation pass (ELBO, KL per dimension, active units) is src/training/validation.py.
"""

from __future__ import annotations

import numpy as np


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
