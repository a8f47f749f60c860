"""Elementwise diagonal-Gaussian densities and KLs of the latent groups, in nats.

A Gaussian is (mean, logvar) with logvar = log sigma^2; every function keeps the shape of its
inputs (one value per latent unit), so callers sum over the units they choose.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LOG_2PI = math.log(2.0 * math.pi)


def kl_normal(
    q_mean: jax.Array, q_logvar: jax.Array, p_mean: jax.Array, p_logvar: jax.Array
) -> jax.Array:
    """KL(N(q_mean, e^q_logvar) || N(p_mean, e^p_logvar)) per unit:

    0.5 * (p_logvar - q_logvar + (e^q_logvar + (q_mean - p_mean)^2) / e^p_logvar - 1).
    With p = N(0, 1) it is the plain VAE's 0.5 * (e^logvar + mean^2 - 1 - logvar).
    """
    return 0.5 * (
        p_logvar
        - q_logvar
        + (jnp.exp(q_logvar) + jnp.square(q_mean - p_mean)) * jnp.exp(-p_logvar)
        - 1.0
    )


def log_normal(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; mean, e^logvar) per unit: -0.5 * ((z - mean)^2 / e^logvar + logvar + log 2 pi)."""
    return -0.5 * (jnp.square(z - mean) * jnp.exp(-logvar) + logvar + LOG_2PI)


def log_normal_at_own_sample(eps: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; mean, e^logvar) per unit at z = mean + e^(logvar/2) * eps: (z - mean)^2 / e^logvar
    is eps^2 exactly, with no cancellation."""
    return -0.5 * (jnp.square(eps) + logvar + LOG_2PI)
