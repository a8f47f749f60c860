"""Builds the VAE named by model.type from its config section.

Every builder checks the image shape against the config (strides, patch size) and raises a
ConfigError naming the layer and the shapes, before anything is traced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from src.models.conv import ConvDecoder, ConvEncoder
from src.models.hier_plan import group_sizes, plan_stages
from src.models.hierarchical import build_hierarchical
from src.models.likelihoods import build_likelihood
from src.models.mlp import MLPDecoder, MLPEncoder
from src.models.transformer import TransformerDecoder, TransformerEncoder
from src.models.vae import VAE
from src.utils.errors import ConfigError

# (model cfg, image_shape, decoder out_channels, rngs) -> (encoder, decoder)
Builder = Callable[[Any, Sequence[int], int, nnx.Rngs], tuple[nnx.Module, nnx.Module]]


def build_mlp(cfg: Any, image_shape: Sequence[int], out: int, rngs: nnx.Rngs):
    hidden = list(cfg.hidden_dims)
    act = cfg.activation
    return (
        MLPEncoder(image_shape, hidden, cfg.latent_dim, act, rngs=rngs),
        MLPDecoder(image_shape, hidden[::-1], cfg.latent_dim, out, act, rngs=rngs),
    )


def build_conv(cfg: Any, image_shape: Sequence[int], out: int, rngs: nnx.Rngs):
    c = cfg.conv
    layers = (list(c.channels), list(c.kernel_sizes), list(c.strides))
    return (
        ConvEncoder(image_shape, *layers, cfg.latent_dim, cfg.activation, rngs=rngs),
        ConvDecoder(image_shape, *layers, cfg.latent_dim, out, cfg.activation, rngs=rngs),
    )


def build_transformer(cfg: Any, image_shape: Sequence[int], out: int, rngs: nnx.Rngs):
    t = cfg.transformer
    body = (cfg.hidden_dim, t.depth, t.heads, t.mlp_ratio, t.dropout)
    return (
        TransformerEncoder(
            image_shape,
            t.patch_size,
            *body,
            t.readout,
            t.init_std,
            cfg.latent_dim,
            cfg.activation,
            rngs=rngs,
        ),
        TransformerDecoder(
            image_shape,
            t.patch_size,
            *body,
            t.init_std,
            cfg.latent_dim,
            out,
            cfg.activation,
            rngs=rngs,
        ),
    )


MODELS: dict[str, Builder] = {
    "mlp": build_mlp,
    "conv": build_conv,
    "transformer": build_transformer,
}


def build_model(cfg: Any, image_shape: Sequence[int], rngs: nnx.Rngs) -> Any:
    """cfg is the `model` section; image_shape is (H, W, C) of the data. Returns a VAE, or a
    HierarchicalVAE for model.type hierarchical (whose interface differs: elbo_terms and
    importance_terms instead of encode and decode)."""
    if cfg.type == "hierarchical":
        model = build_hierarchical(cfg, image_shape, rngs)
        set_compute_dtype(model.net, jnp.dtype(cfg.compute_dtype))
        return model
    if cfg.type not in MODELS:
        raise ConfigError(f"model.type: unknown model {cfg.type!r}; known: {', '.join(MODELS)}")
    likelihood = build_likelihood(cfg, image_shape)
    out_channels = likelihood.decoder_channels(int(image_shape[2]))
    encoder, decoder = MODELS[cfg.type](cfg, image_shape, out_channels, rngs)
    for network in (encoder, decoder):
        set_compute_dtype(network, jnp.dtype(cfg.compute_dtype))
    return VAE(encoder, decoder, likelihood, cfg.scale_param, cfg.scale_floor)


def latent_groups(cfg: Any, image_shape: Sequence[int]) -> tuple[int, ...] | None:
    """Units of each latent group (z_1 first) of a hierarchical model; None for the one-group
    families, whose metrics stay per dimension."""
    if cfg.type != "hierarchical":
        return None
    return group_sizes(plan_stages(cfg.hierarchical, image_shape))


def latent_units(cfg: Any, image_shape: Sequence[int]) -> int:
    """Standard-normal noise units the train step draws per example and sample: latent_dim, or
    the units of all groups of a hierarchical model."""
    groups = latent_groups(cfg, image_shape)
    return cfg.latent_dim if groups is None else sum(groups)


def set_compute_dtype(network: nnx.Module, dtype: jnp.dtype) -> None:
    """Makes every layer of network compute in dtype (model.compute_dtype) while its parameters
    stay float32: Flax layers cast their inputs and parameters to their `dtype` attribute at
    call time. float32 leaves the layers as built (their dtype is then that of the inputs)."""
    if dtype == jnp.float32:
        return
    for _, layer in nnx.iter_modules(network):
        if isinstance(layer, nnx.Linear | nnx.Conv | nnx.ConvTranspose | nnx.LayerNorm):
            layer.dtype = dtype
