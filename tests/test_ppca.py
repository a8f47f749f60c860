"""Closed-form PPCA against a direct Gaussian density, perturbations and the exact posterior."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from src.data.synthetic import linear
from src.evaluation.ppca import gaussian_log_likelihood, ppca_fit, ppca_log_likelihood

D, Q, N = 12, 3, 4000


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    x, _ = linear(np.random.default_rng(0), N, D, [2.0, 1.0, 0.5], 0.3, 0.2)
    return x


def test_closed_form_equals_the_density_of_the_fitted_gaussian(data):
    fit = ppca_fit(data, Q, 0.01)
    cov = fit["W"] @ fit["W"].T + fit["sigma2"] * np.eye(D)
    reference = multivariate_normal(fit["mean"], cov).logpdf(data).mean()
    assert fit["log_likelihood"] == pytest.approx(reference, rel=1e-10)
    assert ppca_log_likelihood(data, fit) == pytest.approx(reference, rel=1e-10)
    assert gaussian_log_likelihood(data, fit["mean"], cov) == pytest.approx(reference, rel=1e-10)


def test_the_fit_is_a_maximum(data):
    fit = ppca_fit(data, Q, 0.01)
    rng = np.random.default_rng(1)
    for _ in range(5):
        w = fit["W"] + 0.02 * rng.standard_normal(fit["W"].shape)
        for sigma2 in (fit["sigma2"], fit["sigma2"] * 1.05):
            cov = w @ w.T + sigma2 * np.eye(D)
            assert gaussian_log_likelihood(data, fit["mean"], cov) < fit["log_likelihood"]
    cov = fit["W"] @ fit["W"].T + fit["sigma2"] * 0.95 * np.eye(D)
    assert gaussian_log_likelihood(data, fit["mean"] + 0.01, cov) < fit["log_likelihood"]


def test_recovers_the_generating_model(data):
    _, info = linear(np.random.default_rng(0), N, D, [2.0, 1.0, 0.5], 0.3, 0.2)
    w_true = np.asarray(info["W"])
    fit = ppca_fit(data, Q, 0.01)
    assert fit["sigma2"] == pytest.approx(0.2**2, rel=0.05)
    np.testing.assert_allclose(fit["W"] @ fit["W"].T, w_true @ w_true.T, atol=0.1)
    np.testing.assert_allclose(fit["mean"], 0.3, atol=0.1)


def test_posterior_statistics_match_the_exact_posterior(data):
    """E_x KL(p(z|x) || N(0, I)) per dimension and Var_x E[z|x] from the exact posterior."""
    fit = ppca_fit(data, Q, 0.01)
    w, s2 = fit["W"], fit["sigma2"]
    m = w.T @ w + s2 * np.eye(Q)
    m_inv = np.linalg.inv(m)
    np.testing.assert_allclose(m, np.diag(np.diag(m)), atol=1e-10)  # diagonal posterior
    post_mean = (data - fit["mean"]) @ w @ m_inv.T  # [N, Q]
    post_var = s2 * np.diag(m_inv)
    kl = 0.5 * (np.mean(post_mean**2, 0) + post_var - 1.0 - np.log(post_var))
    np.testing.assert_allclose(fit["kl_per_dim"], kl, rtol=1e-8)
    np.testing.assert_allclose(fit["posterior_mean_var"], np.var(post_mean, 0), rtol=1e-8)
    # The ELBO with the exact posterior equals the log-likelihood.
    recon = -((data - fit["mean"] - post_mean @ w.T) ** 2) / (2 * s2)
    recon = recon.sum(1).mean() - 0.5 * D * math.log(2 * math.pi * s2)
    recon -= 0.5 * np.trace(w @ np.diag(post_var) @ w.T) / s2
    assert recon - kl.sum() == pytest.approx(fit["log_likelihood"], rel=1e-8)


def test_extra_dimensions_are_inactive_and_bad_q_is_refused(data):
    # With q > k the ML fit also uses the largest noise eigenvalues (l_j exceeds sigma^2 by
    # about 2 sqrt(D / N) sigma^2 at finite N), weakly: 1 - sigma^2 / l_j ~ 0.1 against >= 0.86.
    fit = ppca_fit(data, 6, 0.5)
    assert fit["active_units"] == Q
    assert np.all(fit["posterior_mean_var"][Q:] < 0.2) and np.all(fit["kl_per_dim"][Q:] < 0.15)
    assert ppca_fit(data, 6, 0.01)["active_units"] == 6
    with pytest.raises(ValueError, match="q must be"):
        ppca_fit(data, D, 0.01)
