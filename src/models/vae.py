"""The VAE: an encoder q(z|x) = N(mean, diag(exp(logvar))), a decoder and the likelihood p(x|z)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from src.models.likelihoods import Likelihood
from src.models.posterior import posterior_logvar


class VAE(nnx.Module):
    """Holds an encoder, a decoder and a likelihood module (which may hold learned params, e.g. a
    Gaussian scale). Sampling noise and dropout keys are passed in, so every call is pure.

    scale_param, scale_floor: how the encoder's second output becomes the posterior
    log-variance (src/models/posterior.py; `exp` passes it through)."""

    def __init__(
        self,
        encoder: nnx.Module,
        decoder: nnx.Module,
        likelihood: Likelihood,
        scale_param: str,
        scale_floor: float,
    ):
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.scale_param = scale_param
        self.scale_floor = scale_floor

    def encode(
        self, x: jax.Array, dropout_key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """x: [batch, H, W, C] -> mean, logvar: [batch, latent_dim] float32. No key: no dropout.

        The networks may compute in bfloat16 (model.compute_dtype); what leaves them is float32,
        so sampling, the KL and the likelihood are always float32."""
        mean, raw = self.encoder(x, dropout_key)
        logvar = posterior_logvar(raw.astype(jnp.float32), self.scale_param, self.scale_floor)
        return mean.astype(jnp.float32), logvar

    def decode(self, z: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        """z: [batch, latent_dim] -> likelihood parameters [batch, H, W, C * params_per_pixel],
        float32."""
        return self.decoder(z, dropout_key).astype(jnp.float32)

    def nll(self, outputs: jax.Array, x: jax.Array) -> jax.Array:
        """-log p(x|z) per example in nats: [batch]."""
        return self.likelihood(outputs, x)

    def mean_image(self, outputs: jax.Array) -> jax.Array:
        """E[x | z] from the decoder outputs: [batch, H, W, C] (for figures)."""
        return self.likelihood.mean(outputs)
