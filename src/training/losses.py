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
import optax

from src.utils.errors import ConfigError


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


def bernoulli_nll(logits: jax.Array, x: jax.Array) -> jax.Array:
    """-log Bernoulli(x | sigmoid(logits)) summed over all pixels: [batch, ...] -> [batch] nats.

    x may be fractional in [0, 1] (continuous Bernoulli is *not* used; this is the usual
    cross-entropy objective on grey levels, exact log-likelihood only for binary x).
    """
    per_pixel = optax.sigmoid_binary_cross_entropy(logits, x)
    return per_pixel.reshape(per_pixel.shape[0], -1).sum(axis=-1)


LIKELIHOODS = {"bernoulli": bernoulli_nll}


def reconstruction_nll(likelihood: str, outputs: jax.Array, x: jax.Array) -> jax.Array:
    """-log p(x|z) per example, in nats, for the likelihood named in model.likelihood."""
    if likelihood not in LIKELIHOODS:
        raise ConfigError(
            f"model.likelihood: unknown {likelihood!r}; known: {', '.join(LIKELIHOODS)}"
        )
    return LIKELIHOODS[likelihood](outputs, x)


# E[x | z] from the decoder outputs, per likelihood (for figures). A likelihood added to
# LIKELIHOODS needs its mean here too.
LIKELIHOOD_MEANS = {"bernoulli": jax.nn.sigmoid}


def decoder_mean(likelihood: str, outputs: jax.Array) -> jax.Array:
    """E[x | z] for the likelihood named in model.likelihood: [batch, H, W, C]."""
    if likelihood not in LIKELIHOOD_MEANS:
        raise ConfigError(
            f"model.likelihood: no mean image for {likelihood!r}; known: {', '.join(LIKELIHOOD_MEANS)}"
        )
    return LIKELIHOOD_MEANS[likelihood](outputs)


class VAETerms(NamedTuple):
    """Per-example terms of one forward pass."""

    recon: jax.Array  # [batch] nats
    kl_per_dim: jax.Array  # [batch, D] nats
    mean: jax.Array  # [batch, D] posterior means (for active units)


def vae_terms(model: Any, x: jax.Array, eps: jax.Array, likelihood: str) -> VAETerms:
    """Encodes x, samples z = mean + sigma * eps, decodes, and returns the per-example terms."""
    mean, logvar = model.encode(x)
    z = reparameterize(mean, logvar, eps)
    recon = reconstruction_nll(likelihood, model.decode(z), x)
    return VAETerms(recon=recon, kl_per_dim=gaussian_kl(mean, logvar), mean=mean)
