"""Loss terms of the VAE, each a small pure function in nats.

Notation: x [batch, H, W, C] data, z [batch, D] latents, q(z|x) = N(mean, diag(exp(logvar))),
p(z) = N(0, I). The negative ELBO per example is  recon + kl  with
recon = -E_q[log p(x|z)] (one reparameterized sample) and kl = KL(q(z|x) || p(z))
(Kingma & Welling 2014, "Auto-Encoding Variational Bayes", Appendix B).

The importance-weighted bound (Burda et al. 2016, "Importance Weighted Autoencoders") with k
samples z_s ~ q(z|x) is  L_k(x) = log (1/k) sum_s w_s,  w_s = p(x|z_s) p(z_s) / q(z_s|x);
L_1 is the ELBO and L_k increases with k towards log p(x).
"""

from __future__ import annotations

import math
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
    "group_sums",
    "gaussian_nll",
    "decoder_log_probs",
    "importance_log_weights",
    "iwae_bound",
    "log_normal_diag",
    "reparameterize",
    "vae_terms",
]

LOG_2PI = math.log(2.0 * math.pi)


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
    if hasattr(model, "elbo_terms"):  # a hierarchical model: its KL terms per unit of all groups
        return VAETerms(*model.elbo_terms(x, eps, dropout_key))
    k_enc, k_dec = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    mean, logvar = model.encode(x, k_enc)
    z = reparameterize(mean, logvar, eps)
    recon = model.nll(model.decode(z, k_dec), x)
    return VAETerms(recon=recon, kl_per_dim=gaussian_kl(mean, logvar), mean=mean)


def group_sums(per_unit: jax.Array, group_sizes: tuple[int, ...]) -> jax.Array:
    """[..., U] -> [..., L]: the sum over each latent group's consecutive units (z_1 first)."""
    starts = [sum(group_sizes[:i]) for i in range(len(group_sizes))]
    return jnp.stack(
        [per_unit[..., a : a + n].sum(axis=-1) for a, n in zip(starts, group_sizes, strict=True)],
        axis=-1,
    )


def log_normal_diag(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; mean, diag(exp(logvar))) summed over the last axis (broadcasting): [...]."""
    return -0.5 * jnp.sum(jnp.square(z - mean) * jnp.exp(-logvar) + logvar + LOG_2PI, axis=-1)


def decoder_log_probs(
    model: Any, x: jax.Array, z: jax.Array, dropout_key: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(log p(x|z_s), log p(z_s)) for samples z [S, B, D] of the B examples x: each [S, B].

    log p(x|z) comes from the model's own likelihood (model.nll), learned scales included.
    model: has decode(z [n, D][, dropout_key]) -> outputs and nll(outputs, x) -> [n] nats;
    dropout_key: the decoder's dropout key (training), None for a deterministic decoder.
    """
    num, batch, dim = z.shape
    flat = z.reshape(num * batch, dim)
    outputs = model.decode(flat) if dropout_key is None else model.decode(flat, dropout_key)
    x_rep = jnp.broadcast_to(x, (num, *x.shape)).reshape(num * batch, *x.shape[1:])
    log_px_z = -model.nll(outputs, x_rep).reshape(num, batch)
    log_pz = -0.5 * jnp.sum(jnp.square(z) + LOG_2PI, axis=-1)
    return log_px_z, log_pz


def importance_log_weights(
    model: Any,
    x: jax.Array,
    mean: jax.Array,
    logvar: jax.Array,
    eps: jax.Array,
    dropout_key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x) with z_s = mean + exp(logvar/2) * eps_s.

    Args:
      x: [B, H, W, C]; mean, logvar: [B, D]; eps: [S, B, D] standard normal; model and
      dropout_key as for decoder_log_probs.
    Returns:
      ([S, B] log-weights, [S, B] log p(x|z_s)).
    """
    z = mean + jnp.exp(0.5 * logvar) * eps
    log_px_z, log_pz = decoder_log_probs(model, x, z, dropout_key)
    # log q at its own sample: (z - mean)^2 / var = eps^2 exactly, with no cancellation.
    log_qz = -0.5 * jnp.sum(jnp.square(eps) + logvar + LOG_2PI, axis=-1)
    return log_px_z + log_pz - log_qz, log_px_z


def iwae_bound(log_weights: jax.Array) -> jax.Array:
    """L_k = log (1/k) sum_s exp(log w_s) over the leading (sample) axis: [S, ...] -> [...]."""
    return jax.nn.logsumexp(log_weights, axis=0) - math.log(log_weights.shape[0])
