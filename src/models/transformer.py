"""ViT-style transformer encoder and a transformer decoder that reads z as a prefix token.

Encoder (Dosovitskiy et al. 2021): x [B, H, W, C] -> patches [B, N, p*p*C] -> Linear -> + learned
positional embeddings (after an optional CLS token) -> `depth` pre-norm blocks -> LayerNorm ->
mean over tokens or the CLS token -> Linear -> (mean, logvar).
Decoder: z -> Linear -> one prefix token; N learned query tokens (one per patch); the N + 1 tokens
go through `depth` pre-norm blocks; each query's output -> Linear -> its patch's
likelihood parameters [p*p*out_channels] -> image [B, H, W, out_channels].

Dropout (residual branches and embeddings) takes an explicit key: None means deterministic
(evaluation), so the module holds no RNG state and every call stays a pure function.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from src.models.mlp import MLP
from src.utils.errors import ConfigError


def check_patches(image_shape: Sequence[int], patch_size: int) -> int:
    """Number of patches N = (H / p) * (W / p); a patch size that does not divide is a ConfigError."""
    h, w = int(image_shape[0]), int(image_shape[1])
    if h % patch_size or w % patch_size:
        raise ConfigError(
            f"model.transformer.patch_size ({patch_size}) must divide the image height and width "
            f"({h}x{w}); e.g. a divisor of {h} and {w}"
        )
    return (h // patch_size) * (w // patch_size)


def patchify(x: jax.Array, p: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(t: jax.Array, p: int, h: int, w: int) -> jax.Array:
    """Inverse of patchify: [B, (H/p)*(W/p), p*p*C] -> [B, H, W, C]."""
    b, _, d = t.shape
    c = d // (p * p)
    t = t.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return t.reshape(b, h, w, c)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout: zero each entry with probability rate, scale the rest by 1 / (1 - rate)."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def _split(key: jax.Array | None) -> tuple[jax.Array | None, jax.Array | None]:
    if key is None:
        return None, None
    a, b = jax.random.split(key)
    return a, b


class Attention(nnx.Module):
    """Multi-head self-attention: [B, T, D] -> [B, T, D]."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.out = nnx.Linear(dim, dim, rngs=rngs)
        self.heads = heads

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = (
            u.reshape(b, t, self.heads, d // self.heads) for u in jnp.split(self.qkv(x), 3, -1)
        )
        return self.out(jax.nn.dot_product_attention(q, k, v).reshape(b, t, d))


class Block(nnx.Module):
    """Pre-norm block: x + Drop(Attn(LN(x))), then x + Drop(MLP(LN(x)))."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        activation: str,
        rate: float,
        *,
        rngs: nnx.Rngs,
    ):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = Attention(dim, heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp = MLP([dim, round(dim * mlp_ratio), dim], activation, rngs=rngs)
        self.rate = rate

    def __call__(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
        k_attn, k_mlp = _split(key)
        x = x + dropout(self.attn(self.norm1(x)), self.rate, k_attn)
        return x + dropout(self.mlp(self.norm2(x)), self.rate, k_mlp)


class Transformer(nnx.Module):
    """`depth` pre-norm blocks and a final LayerNorm: [B, T, D] -> [B, T, D]."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        activation: str,
        rate: float,
        *,
        rngs: nnx.Rngs,
    ):
        self.blocks = nnx.List(
            [Block(dim, heads, mlp_ratio, activation, rate, rngs=rngs) for _ in range(depth)]
        )
        self.norm = nnx.LayerNorm(dim, rngs=rngs)

    def __call__(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
        for i, block in enumerate(self.blocks):
            x = block(x, None if key is None else jax.random.fold_in(key, i))
        return self.norm(x)


def _embedding(init_std: float, shape: tuple[int, ...], rngs: nnx.Rngs) -> nnx.Param:
    return nnx.Param(nnx.initializers.normal(init_std)(rngs.params(), shape, jnp.float32))


class TransformerEncoder(nnx.Module):
    """x: [batch, H, W, C] -> (mean, logvar), each [batch, latent_dim]."""

    def __init__(
        self,
        image_shape: Sequence[int],
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        rate: float,
        readout: str,
        init_std: float,
        latent_dim: int,
        activation: str,
        *,
        rngs: nnx.Rngs,
    ):
        n = check_patches(image_shape, patch_size)
        self.patch_size, self.rate, self.readout = patch_size, rate, readout
        self.embed = nnx.Linear(patch_size * patch_size * int(image_shape[2]), dim, rngs=rngs)
        if readout == "cls":
            self.cls = _embedding(init_std, (1, 1, dim), rngs)
        self.pos = _embedding(init_std, (n + (readout == "cls"), dim), rngs)
        self.body = Transformer(dim, depth, heads, mlp_ratio, activation, rate, rngs=rngs)
        self.head = nnx.Linear(dim, 2 * latent_dim, rngs=rngs)

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        k_embed, k_body = _split(dropout_key)
        t = self.embed(patchify(x, self.patch_size))
        if self.readout == "cls":
            t = jnp.concatenate(
                [jnp.broadcast_to(self.cls[...], (t.shape[0], 1, t.shape[2])), t], 1
            )
        t = self.body(dropout(t + self.pos[...], self.rate, k_embed), k_body)
        pooled = t[:, 0] if self.readout == "cls" else t.mean(axis=1)
        mean, logvar = jnp.split(self.head(pooled), 2, axis=-1)
        return mean, logvar


class TransformerDecoder(nnx.Module):
    """z: [batch, latent_dim] -> [batch, H, W, out_channels]."""

    def __init__(
        self,
        image_shape: Sequence[int],
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        rate: float,
        init_std: float,
        latent_dim: int,
        out_channels: int,
        activation: str,
        *,
        rngs: nnx.Rngs,
    ):
        n = check_patches(image_shape, patch_size)
        self.patch_size, self.rate = patch_size, rate
        self.height, self.width = int(image_shape[0]), int(image_shape[1])
        self.latent_in = nnx.Linear(latent_dim, dim, rngs=rngs)
        self.queries = _embedding(init_std, (n, dim), rngs)  # one learned query per patch
        self.body = Transformer(dim, depth, heads, mlp_ratio, activation, rate, rngs=rngs)
        self.out = nnx.Linear(dim, patch_size * patch_size * out_channels, rngs=rngs)

    def __call__(self, z: jax.Array, dropout_key: jax.Array | None) -> jax.Array:
        k_embed, k_body = _split(dropout_key)
        prefix = self.latent_in(z)[:, None, :]
        queries = jnp.broadcast_to(self.queries[...], (z.shape[0], *self.queries.shape))
        t = dropout(jnp.concatenate([prefix, queries], axis=1), self.rate, k_embed)
        patches = self.out(self.body(t, k_body)[:, 1:])
        return unpatchify(patches, self.patch_size, self.height, self.width)
