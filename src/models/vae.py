"""The VAE: an encoder q(z|x) = N(mean, diag(exp(logvar))) and a decoder for p(x|z)."""

from __future__ import annotations

import jax
from flax import nnx


class VAE(nnx.Module):
    """Holds an encoder and a decoder; sampling noise is passed in, so every call is pure."""

    def __init__(self, encoder: nnx.Module, decoder: nnx.Module):
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: [batch, H, W, C] -> mean, logvar: [batch, latent_dim]."""
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        """z: [batch, latent_dim] -> decoder outputs [batch, H, W, C]."""
        return self.decoder(z)
