"""The training objectives: the ELBO, the IWAE bound (Burda et al. 2016) and DReG (Tucker et al.
2019) gradients, and their config checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from src.models.registry import build_model
from src.training.device.parallel import make_mesh
from src.training.losses import importance_log_weights, iwae_bound
from src.training.optim import build_optimizer
from src.training.setup import build_train_step
from src.training.state import init_state, split_model
from src.training.step import iwae_grads
from src.utils.config import load_config
from src.utils.errors import ConfigError
from tests.helpers import BASELINE

SHAPE = (4, 4, 1)
SMALL = ["model.hidden_dims=[8]", "model.latent_dim=2", "model.activation=tanh"]


def small_model(seed: int = 0) -> tuple[nnx.GraphDef, dict, jax.Array]:
    """A 16-8-2 MLP VAE at its random initialization and 6 binary images."""
    cfg = load_config(BASELINE, overrides=SMALL)
    graphdef, params = split_model(build_model(cfg.model, SHAPE, nnx.Rngs(seed)))
    x = jax.random.bernoulli(jax.random.key(seed + 1), 0.4, (6, *SHAPE)).astype(jnp.float32)
    return graphdef, params, x


def train_steps(overrides: list[str], steps: int = 3) -> tuple[list[dict], dict]:
    cfg = load_config(BASELINE, overrides=[*SMALL, "data.binarize=dynamic", *overrides])
    graphdef, params = split_model(build_model(cfg.model, SHAPE, nnx.Rngs(0)))
    tx, schedule = build_optimizer(cfg.optimizer, cfg.training.lr, 10)
    step = build_train_step(cfg, graphdef, tx, schedule, make_mesh(jax.devices()[:1]))
    state = init_state(params, tx)
    x = jax.random.uniform(jax.random.key(0), (8, *SHAPE))
    metrics = []
    for i in range(steps):
        state, m = step(state, x, jax.random.key(i), True)
        metrics.append(jax.device_get(m))
    return metrics, jax.device_get(state.params)


def test_iwae_with_one_sample_is_the_elbo_bit_for_bit():
    elbo, elbo_params = train_steps([])
    iwae, iwae_params = train_steps(["training.objective=iwae", "training.iwae_samples=1"])
    for a, b in zip(elbo, iwae, strict=True):
        assert a.keys() == b.keys() and "iwae_bound" not in a
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    for a, b in zip(jax.tree.leaves(elbo_params), jax.tree.leaves(iwae_params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_iwae_loss_is_minus_the_bound_and_trains():
    metrics, _ = train_steps(["training.objective=iwae", "training.iwae_samples=4"], steps=30)
    for m in metrics:
        assert m["loss"] == -m["iwae_bound"]
    # The bound of a step's batch lies above that batch's single-sample ELBO on average.
    gaps = [m["iwae_bound"] - m["elbo"] for m in metrics]
    assert np.mean(gaps) > 0
    assert np.mean([m["loss"] for m in metrics[-5:]]) < np.mean([m["loss"] for m in metrics[:5]])


def bounds(k: int, draws: int) -> np.ndarray:
    """draws independent estimates of L_k for each of the 6 images of a fixed random model."""
    graphdef, params, x = small_model()
    model = nnx.merge(graphdef, params)
    mean, logvar = model.encode(x)

    @jax.jit
    def one(key: jax.Array) -> jax.Array:
        eps = jax.random.normal(key, (k, *mean.shape))
        return iwae_bound(importance_log_weights(model, x, mean, logvar, eps)[0])

    return np.stack([np.asarray(one(jax.random.key(i))) for i in range(draws)])


def test_iwae_bound_increases_with_k_in_expectation():
    """E[L_1] <= E[L_5] <= E[L_50] (Burda et al. 2016, Theorem 1), with the mean over images of
    the Monte Carlo means, separated by more than 4 standard errors."""
    estimates = {k: bounds(k, 400).mean(axis=1) for k in (1, 5, 50)}
    for small, large in ((1, 5), (5, 50)):
        diff = estimates[large].mean() - estimates[small].mean()
        se = np.sqrt(estimates[large].var() / 400 + estimates[small].var() / 400)
        assert diff > 4 * se, (small, large, diff, se)


def grad_samples(gradient: str, draws: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened encoder and decoder gradients of -mean L_k, one row per noise draw."""
    graphdef, params, x = small_model()

    @jax.jit
    def grads(key: jax.Array) -> dict:
        eps = jax.random.normal(key, (x.shape[0], k, 2))
        return iwae_grads(graphdef, params, x, eps, jax.random.key(0), gradient)[0]

    rows = [jax.device_get(grads(jax.random.key(i))) for i in range(draws)]

    def flat(part: str) -> np.ndarray:
        return np.stack(
            [np.concatenate([np.ravel(v) for v in jax.tree.leaves(r[part])]) for r in rows]
        )

    return flat("encoder"), flat("decoder")


def test_dreg_has_the_standard_expectation_and_a_smaller_variance():
    draws, k = 2000, 16
    enc_std, dec_std = grad_samples("standard", draws, k)
    enc_dreg, dec_dreg = grad_samples("dreg", draws, k)
    # The decoder's gradient is the same estimator, draw by draw.
    np.testing.assert_allclose(dec_dreg, dec_std, rtol=1e-4, atol=1e-6)
    # Same expectation: the paired difference's mean is within 5 standard errors of 0 in every
    # encoder coordinate (the tolerance comes from the sample variance of the difference).
    diff = enc_dreg - enc_std
    se = diff.std(axis=0, ddof=1) / np.sqrt(draws)
    assert np.all(np.abs(diff.mean(axis=0)) <= 5 * se + 1e-7), np.max(np.abs(diff.mean(0)) / se)
    # The gradients are not trivially equal, and DReG's total variance is clearly smaller.
    assert np.max(np.abs(diff)) > 1e-3
    var_std, var_dreg = enc_std.var(axis=0).sum(), enc_dreg.var(axis=0).sum()
    assert var_dreg < 0.5 * var_std, (var_dreg, var_std)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["training.objective=iwae", "training.iwae_samples=0"],
            "training.iwae_samples must be > 0",
        ),
        (
            ["training.iwae_gradient=dreg"],
            "training.iwae_gradient=dreg needs training.objective=iwae",
        ),
        (
            ["training.objective=iwae", "training.kl.beta=2.0"],
            "training.kl.beta=2.0 applies to the ELBO",
        ),
        (["training.objective=iwae", "training.kl.free_bits=0.5"], "training.kl.free_bits=0.5"),
        (["training.objective=iwea"], "training.objective: 'iwea' is not one of elbo, iwae"),
        (["training.lr=nan"], "training.lr must be a finite number, got nan"),
    ],
)
def test_bad_objective_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(BASELINE, overrides=overrides)
