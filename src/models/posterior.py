"""The posterior scale's parameterization: an encoder's raw scale output -> log-variance.

Every encoder emits (mean, raw) per latent dimension; `posterior_logvar` turns raw into the
log-variance that the rest of the code (sampling, KL, log q) reads, so the choice of
parameterization (`model.scale_param`) never reaches the KL or the objectives.

- `exp`: raw is the log-variance itself, std = exp(raw / 2) (Kingma & Welling 2014). Returned
  unchanged, so this choice is bit-identical to an encoder without the mapping.
- `softplus`: std = softplus(raw) + floor. Its gradient is bounded (d std / d raw =
  sigmoid(raw) < 1) where exp's grows with std, the gradient-smoothing choice of
  Efficient-VDVAE (Hazami et al. 2022); the floor keeps log q(z|x) and the KL finite.
  Returned as logvar = 2 log std.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from src.utils.errors import ConfigError

SCALE_PARAMS = ("exp", "softplus")


def posterior_std(raw: jax.Array, kind: str, floor: float) -> jax.Array:
    """The posterior standard deviation from the encoder's raw output (any shape)."""
    if kind == "exp":
        return jnp.exp(0.5 * raw)
    if kind == "softplus":
        return jax.nn.softplus(raw) + floor
    raise ConfigError(f"model.scale_param: {kind!r} is not one of {', '.join(SCALE_PARAMS)}")


def posterior_logvar(raw: jax.Array, kind: str, floor: float) -> jax.Array:
    """log std^2 of posterior_std(raw, kind, floor); for `exp` this is raw itself, untouched."""
    if kind == "exp":
        return raw
    return 2.0 * jnp.log(posterior_std(raw, kind, floor))
