"""Observation models p(x|z): pure negative log-likelihoods and the modules that hold their params.

Every nll returns nats per example, -log p(x|z) summed over all pixels: [batch, H, W, C] -> [batch],
so recon (and the ELBO) of different likelihoods are in the same unit. The decoder emits
`decoder_channels(C)` numbers per pixel (`params_per_pixel` per pixel and channel, except for
the mixture, whose mixture weights are shared by the channels); a likelihood module reads them.
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


# Below this probability a bin's mass is taken as density x bin width (PixelCNN++'s fallback):
# the difference of two nearly equal CDFs has no accurate digits left in float32.
DMOL_MIN_BIN_PROB = 1e-5
DMOL_LOG_FLOOR = 1e-12  # log(max(p, floor)) keeps the unused branch of the select finite


def dmol_rows(channels: int) -> int:
    """Parameter rows per mixture component of a pixel with `channels` channels:
    one mixture logit, C means, C log-scales and C(C-1)/2 channel coefficients (3 for C=1,
    10 for C=3 as in PixelCNN++)."""
    return 1 + 2 * channels + channels * (channels - 1) // 2


def dmol_log_prob(params: jax.Array, x: jax.Array, levels: int, min_log_scale: float) -> jax.Array:
    """log p(x) of each pixel under the discretized logistic mixture (Salimans et al. 2017,
    "PixelCNN++", Sec. 2.1-2.2; the likelihood of VDVAE): [batch, H, W] nats.

    Pixel value x in [0, 1] is level k = round(x * (levels - 1)), placed at
    y = 2 k / (levels - 1) - 1 in [-1, 1] with bins of half-width h = 1 / (levels - 1). With
    M components (weights pi = softmax(logits)), channel c of component m is a logistic with
    mean mu_{m,c} + sum_{j<c} tanh(a_{m,c,j}) y_j (the channel-autoregressive coefficients of
    PixelCNN++: green depends on red, blue on red and green) and scale s = exp(max(log s,
    min_log_scale)):

        p(x) = sum_m pi_m prod_c P_{m,c}(k_c),
        P(k) = sigmoid((y + h - mu) / s) - sigmoid((y - h - mu) / s)  for 0 < k < levels - 1,
        P(0) = sigmoid((y + h - mu) / s),   P(levels - 1) = 1 - sigmoid((y - h - mu) / s),

    so the edge bins take the tails and the levels' probabilities sum to 1. A middle bin whose
    P is below 1e-5 is scored as logistic density at y times the bin width 2h (the paper's
    fallback). The CDF difference is taken on the side of the mean where the sigmoids are
    small (sigmoid(b) - sigmoid(a) = sigmoid(-a) - sigmoid(-b)), the accurate one in float32.

    Args:
      params: [batch, H, W, dmol_rows(C) * M], read as [..., rows, M]: row 0 the logits, rows
        1..C the means, C+1..2C the log-scales, then the coefficients a_{c,j} in the order
        (1,0), (2,0), (2,1), ... (for C = 3: green|red, blue|red, blue|green).
      x: [batch, H, W, C] in [0, 1].
    """
    channels = x.shape[-1]
    rows = dmol_rows(channels)
    p = params.reshape(*params.shape[:-1], rows, -1)  # [B, H, W, rows, M]
    logits = p[..., 0, :]
    mu = p[..., 1 : 1 + channels, :]
    log_s = jnp.maximum(p[..., 1 + channels : 1 + 2 * channels, :], min_log_scale)
    coeffs = jnp.tanh(p[..., 1 + 2 * channels :, :])
    k = jnp.clip(jnp.round(x * (levels - 1)), 0, levels - 1)
    y = 2.0 * k / (levels - 1) - 1.0  # [B, H, W, C]
    shifts, row = [], 0
    for c in range(channels):
        shift = jnp.zeros_like(mu[..., 0, :])
        for j in range(c):
            shift = shift + coeffs[..., row, :] * y[..., j, None]
            row += 1
        shifts.append(shift)
    centered = y[..., None] - (mu + jnp.stack(shifts, axis=-2))  # [B, H, W, C, M]
    inv_s = jnp.exp(-log_s)
    half = 1.0 / (levels - 1)
    plus_in, min_in, mid_in = inv_s * (centered + half), inv_s * (centered - half), inv_s * centered
    upper = jnp.where(mid_in > 0, -min_in, plus_in)
    lower = jnp.where(mid_in > 0, -plus_in, min_in)
    bin_prob = jax.nn.sigmoid(upper) - jax.nn.sigmoid(lower)
    log_pdf_mid = mid_in - log_s - 2.0 * jax.nn.softplus(mid_in)
    log_middle = jnp.where(
        bin_prob > DMOL_MIN_BIN_PROB,
        jnp.log(jnp.maximum(bin_prob, DMOL_LOG_FLOOR)),
        log_pdf_mid + math.log(2.0 * half),
    )
    log_first = plus_in - jax.nn.softplus(plus_in)  # log sigmoid(plus_in)
    log_last = -jax.nn.softplus(min_in)  # log (1 - sigmoid(min_in))
    edge = k[..., None]
    log_bins = jnp.where(edge == 0, log_first, jnp.where(edge == levels - 1, log_last, log_middle))
    log_joint = log_bins.sum(axis=-2) + jax.nn.log_softmax(logits, axis=-1)  # [B, H, W, M]
    return jax.nn.logsumexp(log_joint, axis=-1)


def dmol_mean(params: jax.Array, channels: int) -> jax.Array:
    """E[x] of the mixture's underlying logistics, mapped to [0, 1]: [batch, H, W, C].

    Per component, E[y_c] = mu_c + sum_{j<c} tanh(a_{c,j}) E[y_j] (the coefficients are linear);
    the mixture weights average them. The mass the edge bins collect beyond [-1, 1] is ignored,
    so this is the image figures show, not the exact mean of the discrete distribution.
    """
    p = params.reshape(*params.shape[:-1], dmol_rows(channels), -1)
    weights = jax.nn.softmax(p[..., 0, :], axis=-1)
    coeffs = jnp.tanh(p[..., 1 + 2 * channels :, :])
    means: list[jax.Array] = []
    row = 0
    for c in range(channels):
        mean_c = p[..., 1 + c, :]
        for j in range(c):
            mean_c = mean_c + coeffs[..., row, :] * means[j]
            row += 1
        means.append(mean_c)
    y = (jnp.stack(means, axis=-2) * weights[..., None, :]).sum(axis=-1)
    return jnp.clip((y + 1.0) / 2.0, 0.0, 1.0)


class Bernoulli(nnx.Module):
    """Decoder outputs are per-pixel logits."""

    params_per_pixel: int = 1

    def decoder_channels(self, channels: int) -> int:
        return channels * self.params_per_pixel

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

    def decoder_channels(self, channels: int) -> int:
        return channels * self.params_per_pixel

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

    def decoder_channels(self, channels: int) -> int:
        return channels * self.params_per_pixel

    def __call__(self, outputs: jax.Array, x: jax.Array) -> jax.Array:
        logits = outputs.reshape(*x.shape, self.levels)
        return categorical_nll(logits, x, self.levels)

    def mean(self, outputs: jax.Array) -> jax.Array:
        """E[x | z] = sum_k p_k * k / (levels - 1), in [0, 1]: [batch, H, W, C]."""
        logits = outputs.reshape(*outputs.shape[:-1], -1, self.levels)
        probs = jax.nn.softmax(logits, axis=-1)
        return probs @ (jnp.arange(self.levels, dtype=probs.dtype) / (self.levels - 1))


class DiscretizedLogisticMixture(nnx.Module):
    """Decoder outputs are the parameters of a mixture of `mixtures` discretized logistics per
    pixel over `levels` grey levels (PixelCNN++ / VDVAE); see dmol_log_prob."""

    def __init__(self, channels: int, mixtures: int, levels: int, min_log_scale: float):
        self.channels = channels
        self.mixtures = mixtures
        self.levels = levels
        self.min_log_scale = min_log_scale

    def decoder_channels(self, channels: int) -> int:
        return self.mixtures * dmol_rows(channels)

    def __call__(self, outputs: jax.Array, x: jax.Array) -> jax.Array:
        log_p = dmol_log_prob(outputs, x, self.levels, self.min_log_scale)
        return -_sum_per_example(log_p)

    def mean(self, outputs: jax.Array) -> jax.Array:
        return dmol_mean(outputs, self.channels)


Likelihood = Bernoulli | Gaussian | Categorical | DiscretizedLogisticMixture


def build_likelihood(cfg: Any, image_shape: Sequence[int]) -> Likelihood:
    """cfg is the `model` section; returns the module named by model.likelihood."""
    if cfg.likelihood == "gaussian":
        g = cfg.gaussian
        return Gaussian(image_shape, g.scale, g.fixed_scale, g.min_scale)
    if cfg.likelihood == "categorical":
        return Categorical(cfg.categorical.levels)
    if cfg.likelihood == "dmol":
        d = cfg.dmol
        return DiscretizedLogisticMixture(
            int(image_shape[2]), d.mixtures, d.levels, d.min_log_scale
        )
    if cfg.likelihood == "bernoulli":
        return Bernoulli()
    raise ConfigError(
        f"model.likelihood: unknown {cfg.likelihood!r}; known: bernoulli, gaussian, categorical, dmol"
    )
