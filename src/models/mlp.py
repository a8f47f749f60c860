"""Fully connected encoder and decoder. With no hidden layers both are affine (a linear VAE)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.linear import default_kernel_init

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "elu": jax.nn.elu,
    "silu": jax.nn.silu,
}


class MLP(nnx.Module):
    """Linear layers with an activation between them (none after the last); zero_last starts the
    last layer at zero (a residual branch that starts as the identity, a prior that starts as
    N(0, I): the hierarchical family's blocks)."""

    def __init__(
        self, sizes: Sequence[int], activation: str, zero_last: bool = False, *, rngs: nnx.Rngs
    ):
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        self.layers = nnx.List(
            [
                nnx.Linear(
                    a,
                    b,
                    kernel_init=(
                        nnx.initializers.zeros
                        if zero_last and i == len(pairs) - 1
                        else default_kernel_init
                    ),
                    rngs=rngs,
                )
                for i, (a, b) in enumerate(pairs)
            ]
        )
        self.activation = ACTIVATIONS[activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x


class MLPEncoder(nnx.Module):
    """x: [batch, H, W, C] -> (mean, logvar), each [batch, latent_dim]."""

    def __init__(
        self,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        activation: str,
        *,
        rngs: nnx.Rngs,
    ):
        self.net = MLP(
            [math.prod(image_shape), *hidden_dims, 2 * latent_dim], activation, rngs=rngs
        )

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        h = self.net(x.reshape(x.shape[0], -1))
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, logvar


class MLPDecoder(nnx.Module):
    """z: [batch, latent_dim] -> likelihood parameters [batch, H, W, out_channels]."""

    def __init__(
        self,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        out_channels: int,
        activation: str,
        *,
        rngs: nnx.Rngs,
    ):
        self.out_shape = (*image_shape[:2], out_channels)
        self.net = MLP([latent_dim, *hidden_dims, math.prod(self.out_shape)], activation, rngs=rngs)

    def __call__(self, z: jax.Array, dropout_key: jax.Array | None) -> jax.Array:
        return self.net(z).reshape(z.shape[0], *self.out_shape)
