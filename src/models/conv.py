"""Strided convolutional encoder and transposed-convolution decoder that mirrors it.

Encoder: x [B, H, W, C] -> Conv(stride s_1) -> ... -> Conv(stride s_L) -> flatten -> Linear
-> (mean, logvar). Decoder: z -> Linear -> [B, H_L, W_L, c_L] -> ConvTranspose(s_L) -> ...
-> ConvTranspose(s_1) -> [B, H, W, out_channels]. All convolutions use SAME padding, so a
layer of stride s maps size n to n / s; every stride must divide the size it receives, which
`plan_shapes` checks before anything is traced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from src.models.mlp import ACTIVATIONS
from src.utils.errors import ConfigError


def plan_shapes(image_shape: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """Spatial sizes [(H, W), (H_1, W_1), ..., (H_L, W_L)] after each strided layer.

    Raises ConfigError naming the layer and the shapes when a stride does not divide its input,
    since the decoder could not then restore the image size exactly.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    sizes = [(h, w)]
    for i, s in enumerate(strides):
        if h % s or w % s:
            raise ConfigError(
                f"model.conv layer {i} (stride {s}): input {h}x{w} is not divisible by {s} "
                f"(image {image_shape[0]}x{image_shape[1]}, strides {list(strides)}); each "
                f"stride must divide the size it receives"
            )
        h, w = h // s, w // s
        sizes.append((h, w))
    return sizes


class ConvEncoder(nnx.Module):
    """x: [batch, H, W, C] -> (mean, logvar), each [batch, latent_dim]."""

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Sequence[int],
        kernel_sizes: Sequence[int],
        strides: Sequence[int],
        latent_dim: int,
        activation: str,
        *,
        rngs: nnx.Rngs,
    ):
        h, w = plan_shapes(image_shape, strides)[-1]
        ins = [int(image_shape[2]), *channels[:-1]]
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, (k, k), strides=(s, s), padding="SAME", rngs=rngs)
                for a, b, k, s in zip(ins, channels, kernel_sizes, strides, strict=True)
            ]
        )
        flat = h * w * (channels[-1] if channels else int(image_shape[2]))
        self.head = nnx.Linear(flat, 2 * latent_dim, rngs=rngs)
        self.activation = ACTIVATIONS[activation]

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        for conv in self.convs:
            x = self.activation(conv(x))
        mean, logvar = jnp.split(self.head(x.reshape(x.shape[0], -1)), 2, axis=-1)
        return mean, logvar


class ConvDecoder(nnx.Module):
    """z: [batch, latent_dim] -> [batch, H, W, out_channels]; the encoder's layers reversed."""

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Sequence[int],
        kernel_sizes: Sequence[int],
        strides: Sequence[int],
        latent_dim: int,
        out_channels: int,
        activation: str,
        *,
        rngs: nnx.Rngs,
    ):
        h, w = plan_shapes(image_shape, strides)[-1]
        self.start = (h, w, channels[-1] if channels else out_channels)
        self.proj = nnx.Linear(latent_dim, math.prod(self.start), rngs=rngs)
        # Layer i of the encoder maps c_{i-1} -> c_i; its mirror maps c_i -> c_{i-1}, and the
        # last mirror emits the likelihood parameters instead of the image channels.
        outs = [out_channels, *channels[:-1]] if channels else []
        self.deconvs = nnx.List(
            [
                nnx.ConvTranspose(a, b, (k, k), strides=(s, s), padding="SAME", rngs=rngs)
                for a, b, k, s in reversed(
                    list(zip(channels, outs, kernel_sizes, strides, strict=True))
                )
            ]
        )
        self.activation = ACTIVATIONS[activation]

    def __call__(self, z: jax.Array, dropout_key: jax.Array | None) -> jax.Array:
        x = self.proj(z).reshape(z.shape[0], *self.start)
        for deconv in self.deconvs:
            x = deconv(self.activation(x))
        return x
