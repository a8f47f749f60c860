"""Loss terms against hand-computed values, and the optimizer built from config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from src.training.losses import bernoulli_nll, gaussian_kl, reparameterize
from src.training.optim import build_optimizer
from src.utils.config import load_config
from tests.helpers import BASELINE


def test_kl_of_standard_normal_posterior_is_zero():
    kl = gaussian_kl(jnp.zeros((3, 4)), jnp.zeros((3, 4)))
    np.testing.assert_array_equal(kl, np.zeros((3, 4)))


@pytest.mark.parametrize("mean, var", [(1.5, 0.25), (-0.7, 3.0), (0.0, 0.01)])
def test_kl_matches_numerical_integration(mean, var):
    """KL(q || p) = integral of q(z) (log q(z) - log p(z)) dz, integrated by scipy."""
    from scipy import integrate, stats

    q, p = stats.norm(mean, np.sqrt(var)), stats.norm(0.0, 1.0)
    lo, hi = mean - 12 * np.sqrt(var), mean + 12 * np.sqrt(var)
    expected, _ = integrate.quad(lambda z: q.pdf(z) * (q.logpdf(z) - p.logpdf(z)), lo, hi)
    kl = gaussian_kl(jnp.array(mean, jnp.float32), jnp.log(jnp.array(var, jnp.float32)))
    np.testing.assert_allclose(kl, expected, rtol=1e-5)


def test_kl_matches_monte_carlo():
    mean, logvar = jnp.array([0.3, -1.0]), jnp.array([-0.5, 0.7])
    std = jnp.exp(0.5 * logvar)
    z = mean + std * jax.random.normal(jax.random.key(0), (200_000, 2))
    log_q = -0.5 * (((z - mean) / std) ** 2 + logvar + jnp.log(2 * jnp.pi))
    log_p = -0.5 * (z**2 + jnp.log(2 * jnp.pi))
    np.testing.assert_allclose((log_q - log_p).mean(0), gaussian_kl(mean, logvar), atol=1e-2)


def test_bernoulli_nll_of_known_logits():
    logits = jnp.array([[0.0, 2.0], [-1.0, 0.0]])
    x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    expected = [
        -np.log(0.5) - np.log(1 - sig(2.0)),
        -np.log(1 - sig(-1.0)) - np.log(0.5),
    ]
    np.testing.assert_allclose(bernoulli_nll(logits, x), expected, rtol=1e-6)


def test_bernoulli_nll_sums_over_pixels_per_example():
    logits = jnp.zeros((2, 4, 4, 1))
    out = bernoulli_nll(logits, jnp.ones_like(logits))
    np.testing.assert_allclose(out, [16 * np.log(2)] * 2, rtol=1e-6)


def test_reparameterize():
    z = reparameterize(jnp.array([1.0]), jnp.array([np.log(4.0)]), jnp.array([0.5]))
    np.testing.assert_allclose(z, [2.0])


@pytest.mark.parametrize("kind", ["adam", "adamw", "adamax", "sgd"])
@pytest.mark.parametrize("schedule", ["constant", "warmup_cosine"])
def test_optimizer_from_config(kind, schedule):
    cfg = load_config(
        BASELINE,
        overrides=[
            f"optimizer.type={kind}",
            f"optimizer.schedule={schedule}",
            "optimizer.warmup_steps=10",
            "optimizer.weight_decay=0.01",
            "optimizer.grad_clip_norm=1.0",
        ],
    )
    tx, sched = build_optimizer(cfg.optimizer, cfg.training.lr, 100)
    params = {"w": jnp.ones(3)}
    opt_state = tx.init(params)
    for _ in range(5):  # past step 0, where warm-up starts from lr = 0
        updates, opt_state = tx.update({"w": jnp.full(3, 100.0)}, opt_state, params)
    assert np.all(np.isfinite(updates["w"])) and np.all(updates["w"] < 0)
    if schedule == "constant":
        assert float(sched(50)) == pytest.approx(cfg.training.lr)
    else:
        assert float(sched(0)) == 0.0
        assert float(sched(10)) == pytest.approx(cfg.training.lr)
        assert float(sched(100)) == pytest.approx(0.0, abs=1e-9)
    assert optax.tree.norm(updates) > 0


def test_adamax_follows_kingma_and_ba():
    """Adamax (Kingma & Ba 2015, Algorithm 2): m = b1 m + (1 - b1) g, u = max(b2 u, |g|),
    step = -lr / (1 - b1^t) * m / u (optax adds eps to |g| inside the max), with the L2 weight
    decay added to the gradient first, as for adam."""
    cfg = load_config(
        BASELINE,
        overrides=[
            "optimizer.type=adamax",
            "optimizer.b1=0.8",
            "optimizer.b2=0.9",
            "optimizer.weight_decay=0.1",
            "training.lr=0.01",
        ],
    )
    tx, _ = build_optimizer(cfg.optimizer, cfg.training.lr, 100)
    rng = np.random.default_rng(0)
    w = rng.normal(size=4).astype(np.float32)
    params = {"w": jnp.asarray(w)}
    state = tx.init(params)
    m, u, ref = np.zeros(4), np.zeros(4), w.astype(np.float64)
    for t in range(1, 6):
        g = rng.normal(scale=[0.01, 1.0, 10.0, 100.0], size=4)
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
        g = g + 0.1 * ref
        m = 0.8 * m + 0.2 * g
        u = np.maximum(0.9 * u, np.abs(g) + cfg.optimizer.eps)
        ref = ref - 0.01 / (1 - 0.8**t) * m / u
    np.testing.assert_allclose(params["w"], ref, rtol=1e-5, atol=1e-6)
