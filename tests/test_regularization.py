"""KL schedules and free bits against hand-computed values; likelihoods against scipy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import special, stats

from src.models.likelihoods import Gaussian, categorical_nll, gaussian_nll
from src.models.registry import build_model
from src.training.device.parallel import make_mesh
from src.training.kl import free_bits_kl, kl_weight, kl_weight_from_config
from src.training.optim import build_optimizer
from src.training.setup import build_train_step
from src.training.state import init_state, split_model
from src.utils.config import load_config
from tests.helpers import BASELINE


def weight(step, warmup, beta=2.0, warmup_steps=100, cycle_steps=40, cycle_ramp=0.5):
    return float(
        kl_weight(
            step,
            beta=beta,
            warmup=warmup,
            warmup_steps=warmup_steps,
            cycle_steps=cycle_steps,
            cycle_ramp=cycle_ramp,
        )
    )


@pytest.mark.parametrize(
    "warmup, step, expected",
    [
        ("none", 0, 2.0),
        ("none", 12345, 2.0),
        ("linear", 0, 0.0),
        ("linear", 25, 0.5),  # 2 * 25 / 100
        ("linear", 99, 1.98),
        ("linear", 100, 2.0),
        ("linear", 5000, 2.0),
        ("cyclical", 0, 0.0),
        ("cyclical", 10, 1.0),  # tau = 10/40 = 0.25, 0.25 / 0.5 = 0.5 of beta
        ("cyclical", 19, 1.9),
        ("cyclical", 20, 2.0),  # the ramp ends halfway through the cycle
        ("cyclical", 39, 2.0),
        ("cyclical", 40, 0.0),  # a new cycle starts from zero
        ("cyclical", 50, 1.0),
    ],
)
def test_kl_weight_schedules(warmup, step, expected):
    assert weight(step, warmup) == pytest.approx(expected, abs=1e-6)


def test_kl_weight_is_traceable_and_reads_the_config():
    cfg = load_config(
        BASELINE, overrides=["training.kl.warmup=linear", "training.kl.warmup_steps=8"]
    )
    steps = jnp.arange(10)
    out = jax.jit(jax.vmap(lambda s: kl_weight_from_config(cfg.training.kl, s)))(steps)
    np.testing.assert_allclose(out, [0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1, 1])


def test_free_bits_floor_and_gradient():
    kl = jnp.array([0.05, 0.3, 1.2])
    assert float(free_bits_kl(kl, 0.25, None)) == pytest.approx(0.25 + 0.3 + 1.2)
    assert float(free_bits_kl(kl, 0.0, None)) == pytest.approx(1.55)
    grad = jax.grad(lambda k: free_bits_kl(k, 0.25, None))(kl)
    np.testing.assert_array_equal(grad, [0.0, 1.0, 1.0])  # the floored dimension gets no push
    # An externally decided mask (the global batch under data parallelism) is what counts.
    active = jnp.array([True, False, True])
    assert float(free_bits_kl(kl, 0.25, active)) == pytest.approx(0.05 + 0.25 + 1.2)


def test_gaussian_nll_matches_scipy():
    rng = np.random.default_rng(0)
    x, mean = jnp.asarray(rng.uniform(size=(2, 3, 4, 4, 1)), jnp.float32)
    scale = jnp.asarray(rng.uniform(0.05, 2.0, size=(4, 4, 1)), jnp.float32)
    expected = -stats.norm.logpdf(x, mean, scale).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(gaussian_nll(mean, scale, x), expected, rtol=1e-5)
    shared = -stats.norm.logpdf(x, mean, 0.3).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(gaussian_nll(mean, jnp.float32(0.3), x), shared, rtol=1e-5)


def test_learned_gaussian_scale_is_softplus_above_the_floor():
    lik = Gaussian((2, 2, 1), "shared", init_scale=0.5, min_scale=0.01)
    assert float(lik.scale()) == pytest.approx(0.5, rel=1e-6)
    lik.raw_scale[...] = jnp.float32(-50.0)
    assert float(lik.scale()) == pytest.approx(0.01, rel=1e-6)  # never below min_scale


def test_categorical_nll_matches_scipy():
    rng = np.random.default_rng(1)
    levels = 17
    logits = rng.normal(size=(2, 3, 3, 1, levels)).astype(np.float32)
    k = rng.integers(0, levels, size=(2, 3, 3, 1))
    x = (k / (levels - 1)).astype(np.float32)
    log_p = special.log_softmax(logits, axis=-1)
    expected = -np.take_along_axis(log_p, k[..., None], -1).reshape(2, -1).sum(-1)
    out = categorical_nll(jnp.asarray(logits), jnp.asarray(x), levels)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def one_step_metrics(overrides: list[str], steps: int) -> list[dict]:
    cfg = load_config(
        BASELINE, overrides=["model.hidden_dims=[8]", "model.latent_dim=3", *overrides]
    )
    graphdef, params = split_model(build_model(cfg.model, (8, 8, 1), nnx.Rngs(0)))
    tx, schedule = build_optimizer(cfg.optimizer, cfg.training.lr, 10)
    step = build_train_step(cfg, graphdef, tx, schedule, make_mesh(jax.devices()[:1]))
    state = init_state(params, tx)
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    out = []
    for i in range(steps):
        state, metrics = step(state, x, jax.random.key(i), True)
        out.append(jax.device_get(metrics))
    return out


def test_step_optimizes_the_weighted_floored_loss_and_logs_the_true_elbo():
    history = one_step_metrics(
        [
            "training.kl.beta=2.0",
            "training.kl.warmup=linear",
            "training.kl.warmup_steps=4",
            "training.kl.free_bits=0.5",
        ],
        3,
    )
    for t, m in enumerate(history):
        w = 2.0 * t / 4
        assert float(m["kl_weight"]) == pytest.approx(w)
        floored = np.maximum(np.asarray(m["kl_per_dim"]), 0.5).sum()
        assert float(m["loss"]) == pytest.approx(float(m["recon"]) + w * floored, rel=1e-5)
        assert float(m["elbo"]) == pytest.approx(-(float(m["recon"]) + float(m["kl"])), rel=1e-6)
        assert float(m["kl"]) == pytest.approx(float(np.sum(m["kl_per_dim"])), rel=1e-5)
