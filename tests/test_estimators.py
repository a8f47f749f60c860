"""IWAE, mutual information and active units against closed forms and constructed cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from src.evaluation.estimators import (
    chunked_log_mean_exp,
    iwae_log_likelihood,
    mutual_information,
)
from src.training.validation import active_units

NOISE_VAR = 0.25  # sigma^2 of the test's Gaussian likelihood


def gaussian_nll(outputs: jax.Array, x: jax.Array) -> jax.Array:
    """-log N(x; outputs, NOISE_VAR * I) summed over everything but the batch axis."""
    per = 0.5 * (jnp.square(x - outputs) / NOISE_VAR + math.log(2 * math.pi * NOISE_VAR))
    return per.reshape(per.shape[0], -1).sum(-1)


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(W z + b, NOISE_VAR I); encoder q(z|x) = N(A x + c, diag(v)).

    W has orthogonal columns, so the exact posterior is diagonal and lies in the family:
    Var = 1 / (1 + s^2 / NOISE_VAR), mean = Var * W^T (x - b) / NOISE_VAR.
    """

    def __init__(self, x_dim: int, z_dim: int, seed: int):
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.normal(size=(x_dim, x_dim)))
        scales = np.linspace(2.0, 0.5, z_dim)
        self.W = q[:, :z_dim] * scales
        self.b = rng.normal(size=x_dim)
        post_var = 1.0 / (1.0 + scales**2 / NOISE_VAR)
        self.A = (post_var[:, None] * self.W.T) / NOISE_VAR
        self.c = -self.A @ self.b
        self.logvar = np.log(post_var)

    def perturbed(self, shift: float, log_scale: float) -> LinearGaussian:
        other = object.__new__(LinearGaussian)
        other.__dict__.update(self.__dict__)
        other.c = self.c + shift
        other.logvar = self.logvar + log_scale
        return other

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean = x @ jnp.asarray(self.A.T, jnp.float32) + jnp.asarray(self.c, jnp.float32)
        return mean, jnp.broadcast_to(jnp.asarray(self.logvar, jnp.float32), mean.shape)

    def nll(self, outputs: jax.Array, x: jax.Array) -> jax.Array:
        return gaussian_nll(outputs, x)

    def decode(self, z: jax.Array) -> jax.Array:
        return z @ jnp.asarray(self.W.T, jnp.float32) + jnp.asarray(self.b, jnp.float32)

    def sample_x(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        z = rng.normal(size=(n, self.W.shape[1]))
        return z @ self.W.T + self.b + math.sqrt(NOISE_VAR) * rng.normal(size=(n, len(self.b)))

    def exact_log_px(self, x: np.ndarray) -> np.ndarray:
        """log N(x; b, W W^T + NOISE_VAR I), in float64."""
        cov = self.W @ self.W.T + NOISE_VAR * np.eye(len(self.b))
        _, logdet = np.linalg.slogdet(cov)
        diff = x - self.b
        maha = np.einsum("ni,ni->n", diff, np.linalg.solve(cov, diff.T).T)
        return -0.5 * (maha + logdet + len(self.b) * math.log(2 * math.pi))

    def exact_gap(self, x: np.ndarray) -> np.ndarray:
        """KL(q(z|x) || p(z|x)) = log p(x) - ELBO(x), for this encoder, in float64."""
        post_var = 1.0 / (1.0 + (self.W**2).sum(0) / NOISE_VAR)
        post_mean = (post_var[:, None] * self.W.T / NOISE_VAR) @ (x - self.b).T
        q_mean = (self.A @ x.T).T + self.c
        q_var = np.exp(self.logvar)
        return 0.5 * np.sum(
            q_var / post_var
            + (q_mean - post_mean.T) ** 2 / post_var
            - 1
            + np.log(post_var / q_var),
            axis=1,
        )


def iwae(model, x, k, chunk, seeds=(0,)):
    """L_k(x) [len(seeds), N] in float64, one compilation for all seeds."""
    fn = jax.jit(
        jax.vmap(lambda key: iwae_log_likelihood(model, jnp.asarray(x, jnp.float32), key, k, chunk))
    )
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    return np.asarray(fn(keys), np.float64)


@pytest.mark.parametrize("chunk", [1, 3, 7, 20, 64])
def test_chunked_log_mean_exp_equals_log_sum_exp(chunk):
    w = jax.random.normal(jax.random.key(0), (20, 5)) * 30.0 - 1000.0  # far outside exp's range
    got = jax.jit(
        lambda: chunked_log_mean_exp(
            lambda c: jax.lax.dynamic_slice_in_dim(
                jnp.concatenate([w, jnp.zeros((64, 5))]), c * chunk, chunk
            ),
            20,
            chunk,
        )
    )()
    expected = jax.nn.logsumexp(np.asarray(w, np.float64), axis=0) - math.log(20)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_iwae_with_the_exact_posterior_is_exact_for_every_k():
    model = LinearGaussian(x_dim=6, z_dim=3, seed=0)
    x = model.sample_x(16, seed=1)
    exact = model.exact_log_px(x)
    for k in (1, 10):  # every importance weight equals p(x) when q(z|x) = p(z|x)
        np.testing.assert_allclose(iwae(model, x, k, 4)[0], exact, atol=2e-4)


def test_iwae_converges_to_the_marginal_likelihood():
    exact_model = LinearGaussian(x_dim=6, z_dim=3, seed=0)
    model = exact_model.perturbed(shift=0.4, log_scale=0.7)
    x = model.sample_x(32, seed=2)
    exact = model.exact_log_px(x)
    gap = model.exact_gap(x)
    assert gap.mean() > 0.3  # the perturbation makes the ELBO visibly loose
    # k = 1 is an unbiased estimate of the ELBO = log p(x) - KL(q || p(z|x)).
    elbo = iwae(model, x, 1, 1, seeds=range(400)).mean(0)
    np.testing.assert_allclose(elbo.mean(), (exact - gap).mean(), atol=0.05)
    # k = 5000 in chunks of 128 (the last one partial) closes almost all of the gap.
    bound = iwae(model, x, 5000, 128)[0]
    np.testing.assert_allclose(bound, exact, atol=0.15)  # per example: sampling noise
    np.testing.assert_allclose(bound.mean(), exact.mean(), atol=0.02)


def test_iwae_nll_does_not_increase_with_k():
    model = LinearGaussian(x_dim=6, z_dim=3, seed=0).perturbed(shift=0.4, log_scale=0.7)
    x = model.sample_x(64, seed=3)
    nll = {k: -iwae(model, x, k, 50, seeds=(5,))[0] for k in (1, 10, 100, 1000)}
    ks = sorted(nll)
    for small, large in zip(ks[:-1], ks[1:], strict=True):
        diff = nll[large] - nll[small]
        noise = 3 * diff.std() / math.sqrt(len(diff))
        assert diff.mean() <= noise, (small, large, diff.mean(), noise)
    assert nll[1000].mean() < nll[1].mean() - 0.2  # and it does decrease


def test_active_units_on_a_constructed_posterior():
    rng = np.random.default_rng(0)
    variances = np.array([2.0, 0.5, 0.011, 0.009, 0.0])
    base = rng.normal(size=(500, 5))
    base = (base - base.mean(0)) / base.std(0)  # exactly zero mean and unit variance
    means = base * np.sqrt(variances) + 3.0  # an offset does not make a unit active
    assert active_units(means, 0.01) == 3
    assert active_units(means, 0.0) == 4
    assert active_units(means, 1.0) == 1


def mi(means, logvars, samples=5, chunk=64, seed=0):
    return float(
        mutual_information(
            jax.random.key(seed), jnp.asarray(means), jnp.asarray(logvars), samples, chunk
        )
    )


def test_mutual_information_is_zero_for_collapsed_posteriors():
    n, d = 50, 4
    means = np.tile(np.array([[0.3, -1.0, 0.0, 2.0]], np.float32), (n, 1))
    logvars = np.full((n, d), -0.5, np.float32)
    assert mi(means, logvars) == pytest.approx(0.0, abs=1e-5)


def test_mutual_information_is_log_n_for_separated_posteriors():
    n = 40
    means = np.zeros((n, 2), np.float32)
    means[:, 0] = 10.0 * np.arange(n)
    logvars = np.full((n, 2), np.log(0.01), np.float32)
    assert mi(means, logvars) == pytest.approx(math.log(n), abs=1e-4)


def test_mutual_information_of_a_gaussian_channel():
    """mu_n ~ N(0, s2), q(z|x_n) = N(mu_n, v): for large N, I = 0.5 log(1 + s2 / v) per dim."""
    n, s2, v = 2000, 1.0, 0.25
    means = np.random.default_rng(0).normal(scale=math.sqrt(s2), size=(n, 2)).astype(np.float32)
    logvars = np.full((n, 2), math.log(v), np.float32)
    expected = 2 * 0.5 * math.log(1 + s2 / v)
    assert mi(means, logvars, samples=4, chunk=500) == pytest.approx(expected, abs=0.03)


def test_mutual_information_is_within_zero_and_log_n():
    rng = np.random.default_rng(1)
    for n in (5, 30):
        means = rng.normal(size=(n, 3)).astype(np.float32)
        logvars = rng.normal(size=(n, 3)).astype(np.float32)
        value = mi(means, logvars, samples=20, chunk=7)
        assert 0.0 <= value <= math.log(n)


def test_kl_mass_units_counts_the_dimensions_that_carry_the_kl():
    from src.evaluation.metrics import kl_mass_units

    assert kl_mass_units(np.array([0.0, 5.0, 0.02, 3.0, 2.0]), 0.99) == 3
    assert kl_mass_units(np.array([0.0, 5.0, 0.02, 3.0, 2.0]), 0.9999) == 4
    assert kl_mass_units(np.array([0.0, 5.0, 0.02, 3.0, 2.0]), 0.49) == 1  # 5 of 10.02 nats
    assert kl_mass_units(np.array([0.001, 0.001, 0.001]), 0.99) == 3  # scale-free
    assert kl_mass_units(np.zeros(4), 0.99) == 0
