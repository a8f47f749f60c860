"""The posterior scale's parameterization (model.scale_param): exp passes the log-variance
through bit for bit; softplus gives std = softplus(raw) + floor."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from src.models.posterior import posterior_logvar, posterior_std
from src.models.registry import build_model
from src.training.losses import gaussian_kl
from src.utils.config import load_config
from src.utils.errors import ConfigError
from tests.helpers import BASELINE


def test_exp_returns_the_raw_output_unchanged():
    raw = jax.random.normal(jax.random.key(0), (5, 7)) * 10
    assert posterior_logvar(raw, "exp", 0.1) is raw
    np.testing.assert_array_equal(posterior_std(raw, "exp", 0.1), jnp.exp(0.5 * raw))


def test_softplus_std_has_its_floor_and_a_bounded_gradient():
    raw = jnp.asarray([-100.0, -1.0, 0.0, 3.0, 30.0])
    std = posterior_std(raw, "softplus", 1e-3)
    np.testing.assert_allclose(std, np.log1p(np.exp(np.asarray(raw, np.float64))) + 1e-3, rtol=1e-6)
    assert float(std[0]) == pytest.approx(1e-3)
    np.testing.assert_allclose(
        jnp.exp(0.5 * posterior_logvar(raw, "softplus", 1e-3)), std, rtol=1e-6
    )
    grads = jax.vmap(jax.grad(lambda r: posterior_std(r, "softplus", 1e-3)))(raw)
    assert bool(jnp.all((grads >= 0) & (grads <= 1)))


def test_kl_of_the_softplus_logvar_is_the_closed_form_in_std():
    rng = np.random.default_rng(0)
    mean, raw = rng.normal(size=(2, 4, 3)).astype(np.float32)
    std = np.log1p(np.exp(raw.astype(np.float64))) + 1e-4
    expected = 0.5 * (std**2 + mean.astype(np.float64) ** 2 - 1 - 2 * np.log(std))
    logvar = posterior_logvar(jnp.asarray(raw), "softplus", 1e-4)
    np.testing.assert_allclose(gaussian_kl(jnp.asarray(mean), logvar), expected, rtol=1e-5)


def encode(scale_param: str, family: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    cfg = load_config(
        BASELINE, {"model": family}, [f"model.scale_param={scale_param}", "model.latent_dim=3"]
    )
    model = build_model(cfg.model, (8, 8, 1), nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
    _, raw = model.encoder(x, None)
    mean, logvar = model.encode(x)
    return mean, logvar, raw


@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_model_encode_applies_the_configured_mapping(family: str):
    _, logvar, raw = encode("exp", family)
    np.testing.assert_array_equal(logvar, raw)  # the default: bit-identical to the encoder
    _, logvar, raw = encode("softplus", family)
    np.testing.assert_allclose(jnp.exp(0.5 * logvar), jax.nn.softplus(raw) + 1e-4, rtol=1e-5)


def test_exp_is_the_default_and_unknown_kinds_are_config_errors():
    assert load_config(BASELINE).model.scale_param == "exp"
    with pytest.raises(ConfigError, match="model.scale_param"):
        load_config(BASELINE, overrides=["model.scale_param=log"])
    with pytest.raises(ConfigError, match="model.scale_floor"):
        load_config(BASELINE, overrides=["model.scale_floor=0.0"])
