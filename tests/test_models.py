"""Forward-pass shapes and structure of the models built from config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from src.models.registry import build_model
from src.utils.config import load_config
from src.utils.errors import ConfigError
from tests.helpers import BASELINE


@pytest.mark.parametrize("image_shape", [(8, 8, 1), (28, 28, 1)])
@pytest.mark.parametrize("batch", [1, 7])
def test_mlp_shapes(image_shape, batch):
    cfg = load_config(
        BASELINE, overrides=["model.latent_dim=5", "model.likelihood=bernoulli"]
    ).model
    model = build_model(cfg, image_shape, nnx.Rngs(0))
    x = jnp.ones((batch, *image_shape))
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (batch, 5)
    assert model.decode(mean).shape == (batch, *image_shape)


def test_empty_hidden_list_is_an_exactly_linear_vae():
    cfg = load_config(BASELINE, overrides=["model.hidden_dims=[]", "model.latent_dim=3"]).model
    model = build_model(cfg, (8, 8, 1), nnx.Rngs(0))
    _, params = nnx.split(model, nnx.Param)
    assert len(jax.tree.leaves(params)) == 4  # one kernel and bias each way
    z1, z2 = jax.random.normal(jax.random.key(0), (2, 1, 3))
    # Affine maps satisfy f(a + b) - f(b) = f(a) - f(0).
    zero = jnp.zeros((1, 3))
    lhs = model.decode(z1 + z2) - model.decode(z2)
    rhs = model.decode(z1) - model.decode(zero)
    np.testing.assert_allclose(lhs, rhs, atol=1e-5)


def test_unknown_model_type_is_a_config_error():
    cfg = load_config(BASELINE).model.as_configdict()
    cfg.type = "nope"
    with pytest.raises(ConfigError, match="model.type: unknown model 'nope'"):
        build_model(cfg, (8, 8, 1), nnx.Rngs(0))
