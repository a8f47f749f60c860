"""Loss terms of the VAE, each a small pure function in nats.

Notation: x [batch, H, W, C] data, z [batch, D] latents, q(z|x) = N(mean, diag(exp(logvar))),
p(z) = N(0, I). The negative ELBO per example is  recon + kl  with
recon = -E_q[log p(x|z)] (one reparameterized sample) and kl = KL(q(z|x) || p(z))
(Kingma & Welling 2014, "Auto-Encoding Variational Bayes", Appendix B).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

# The observation models live with the model (a learned scale is a model parameter).
from src.models.likelihoods import bernoulli_nll, categorical_nll, gaussian_nll

__all__ = [
    "VAETerms",
    "bernoulli_nll",
    "categorical_nll",
    "gaussian_kl",
    "gaussian_nll",
    "reparameterize",
    "vae_terms",
]


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per dimension, in nats.

    KL_d = 0.5 * (exp(logvar_d) + mean_d^2 - 1 - logvar_d).

    Args:
      mean, logvar: [..., D].
    Returns:
      [..., D], elementwise KL.
    """
    return 0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)


def reparameterize(mean: jax.Array, logvar: jax.Array, eps: jax.Array) -> jax.Array:
    """z = mean + exp(logvar / 2) * eps with eps ~ N(0, I) drawn by the caller."""
    return mean + jnp.exp(0.5 * logvar) * eps


class VAETerms(NamedTuple):
    """Per-example terms of one forward pass."""

    recon: jax.Array  # [batch] nats
    kl_per_dim: jax.Array  # [batch, D] nats
    mean: jax.Array  # [batch, D] posterior means (for active units)


def vae_terms(model: Any, x: jax.Array, eps: jax.Array, dropout_key: jax.Array | None) -> VAETerms:
    """Encodes x, samples z = mean + sigma * eps, decodes, and returns the per-example terms.

    recon = -log p(x|z) from the model's likelihood module (nats per example, any likelihood).
    dropout_key: None for a deterministic pass (evaluation); otherwise split between encoder
    and decoder.
    """
    k_enc, k_dec = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    mean, logvar = model.encode(x, k_enc)
    z = reparameterize(mean, logvar, eps)
    recon = model.nll(model.decode(z, k_dec), x)
    return VAETerms(recon=recon, kl_per_dim=gaussian_kl(mean, logvar), mean=mean)
