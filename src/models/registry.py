"""Builds the VAE named by model.type from its config section."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flax import nnx

from src.models.mlp import MLPDecoder, MLPEncoder
from src.models.vae import VAE
from src.utils.errors import ConfigError


def build_mlp(cfg: Any, image_shape: Sequence[int], rngs: nnx.Rngs) -> VAE:
    hidden = list(cfg.hidden_dims)
    return VAE(
        MLPEncoder(image_shape, hidden, cfg.latent_dim, cfg.activation, rngs=rngs),
        MLPDecoder(image_shape, hidden[::-1], cfg.latent_dim, cfg.activation, rngs=rngs),
    )


MODELS: dict[str, Callable[[Any, Sequence[int], nnx.Rngs], VAE]] = {
    "mlp": build_mlp,
}


def build_model(cfg: Any, image_shape: Sequence[int], rngs: nnx.Rngs) -> VAE:
    """cfg is the `model` section; image_shape is (H, W, C) of the data."""
    if cfg.type not in MODELS:
        raise ConfigError(f"model.type: unknown model {cfg.type!r}; known: {', '.join(MODELS)}")
    return MODELS[cfg.type](cfg, image_shape, rngs)
