"""Observation models p(x|z): pure negative log-likelihoods and the modules that hold their params.

Every nll returns nats per example, -log p(x|z) summed over all pixels: [batch, H, W, C] -> [batch],
so recon (and the ELBO) of different likelihoods are in the same unit. The decoder emits
`params_per_pixel` numbers per pixel and channel; a likelihood module reads them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from src.utils.errors import ConfigError


def _sum_per_example(per_pixel: jax.Array) -> jax.Array:
    return per_pixel.reshape(per_pixel.shape[0], -1).sum(axis=-1)


def bernoulli_nll(logits: jax.Array, x: jax.Array) -> jax.Array:
    """-log Bernoulli(x | sigmoid(logits)) summed over all pixels: [batch, ...] -> [batch] nats.

    x may be fractional in [0, 1] (continuous Bernoulli is *not* used; this is the usual
    cross-entropy objective on grey levels, exact log-likelihood only for binary x).

    -x log s(l) - (1 - x) log s(-l) = softplus(l) - x l  (s the sigmoid): one softplus per
    pixel instead of two log-sigmoids, which matters where the IWAE evaluation scores
    thousands of samples per image. softplus(l) = max(l, 0) + log1p(exp(-|l|)), so for
    confident logits the difference max(l, 0) - x l is exact.
    """
    return _sum_per_example(jax.nn.softplus(logits) - x * logits)


def gaussian_nll(mean: jax.Array, scale: jax.Array, x: jax.Array) -> jax.Array:
    """-log N(x | mean, scale^2) summed over all pixels: [batch, ...] -> [batch] nats.

    -log N(x | m, s^2) = 0.5 * ((x - m) / s)^2 + log s + 0.5 * log(2 pi); scale broadcasts
    against mean (a scalar, one value per pixel, or one per example and pixel).
    """
    per_pixel = 0.5 * jnp.square((x - mean) / scale) + jnp.log(scale) + 0.5 * math.log(2 * math.pi)
    return _sum_per_example(jnp.broadcast_to(per_pixel, x.shape))


def categorical_nll(logits: jax.Array, x: jax.Array, levels: int) -> jax.Array:
    """-log Categorical(k(x) | softmax(logits)) summed over all pixels: [batch] nats.

    Args:
      logits: [batch, H, W, C, levels].
      x: [batch, H, W, C] in [0, 1]; pixel value x is level k(x) = round(x * (levels - 1)).
    """
    target = jnp.clip(jnp.round(x * (levels - 1)), 0, levels - 1).astype(jnp.int32)
    return _sum_per_example(optax.softmax_cross_entropy_with_integer_labels(logits, target))


class Bernoulli(nnx.Module):
    """Decoder outputs are per-pixel logits."""

    params_per_pixel: int = 1

    def __call__(self, outputs: jax.Array, x: jax.Array) -> jax.Array:
        return bernoulli_nll(outputs, x)

    def mean(self, outputs: jax.Array) -> jax.Array:
        """E[x | z] = sigmoid(logits)."""
        return jax.nn.sigmoid(outputs)


class Gaussian(nnx.Module):
    """Decoder outputs are per-pixel means; the std is fixed or a learned nnx.Param.

    A learned std is s = min_scale + softplus(raw), with raw initialised so that s = init_scale;
    `shared` learns one scalar, `per_pixel` one std per pixel and channel (image_shape).
    """

    params_per_pixel = 1

    def __init__(self, image_shape: Sequence[int], scale: str, init_scale: float, min_scale: float):
        self.min_scale = min_scale
        self.fixed: float | None = init_scale if scale == "fixed" else None
        if scale != "fixed":
            shape = () if scale == "shared" else tuple(image_shape)
            raw = math.log(math.expm1(init_scale - min_scale))  # inverse softplus
            self.raw_scale = nnx.Param(jnp.full(shape, raw, jnp.float32))

    def scale(self) -> jax.Array:
        if self.fixed is not None:
            return jnp.asarray(self.fixed, jnp.float32)
        return self.min_scale + jax.nn.softplus(self.raw_scale[...])

    def __call__(self, outputs: jax.Array, x: jax.Array) -> jax.Array:
        return gaussian_nll(outputs, self.scale(), x)

    def mean(self, outputs: jax.Array) -> jax.Array:
        """E[x | z] = the decoder output."""
        return outputs


class Categorical(nnx.Module):
    """Decoder outputs are `levels` logits per pixel and channel, over the grey levels."""

    def __init__(self, levels: int):
        self.levels = levels
        self.params_per_pixel = levels

    def __call__(self, outputs: jax.Array, x: jax.Array) -> jax.Array:
        logits = outputs.reshape(*x.shape, self.levels)
        return categorical_nll(logits, x, self.levels)

    def mean(self, outputs: jax.Array) -> jax.Array:
        """E[x | z] = sum_k p_k * k / (levels - 1), in [0, 1]: [batch, H, W, C]."""
        logits = outputs.reshape(*outputs.shape[:-1], -1, self.levels)
        probs = jax.nn.softmax(logits, axis=-1)
        return probs @ (jnp.arange(self.levels, dtype=probs.dtype) / (self.levels - 1))


Likelihood = Bernoulli | Gaussian | Categorical


def build_likelihood(cfg: Any, image_shape: Sequence[int]) -> Likelihood:
    """cfg is the `model` section; returns the module named by model.likelihood."""
    if cfg.likelihood == "gaussian":
        g = cfg.gaussian
        return Gaussian(image_shape, g.scale, g.fixed_scale, g.min_scale)
    if cfg.likelihood == "categorical":
        return Categorical(cfg.categorical.levels)
    if cfg.likelihood == "bernoulli":
        return Bernoulli()
    raise ConfigError(
        f"model.likelihood: unknown {cfg.likelihood!r}; known: bernoulli, gaussian, categorical"
    )
