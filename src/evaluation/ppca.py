"""Closed-form maximum-likelihood probabilistic PCA (Tipping & Bishop 1999, Sec. 3.2).

Model: z ~ N(0, I_q), x = W z + mu + sigma eps, so x ~ N(mu, C) with C = W W^T + sigma^2 I_D.
With the sample mean mu and the sample covariance S = (1/N) sum_n (x_n - mu)(x_n - mu)^T
(eigenvalues l_1 >= ... >= l_D, eigenvectors U), the maximum of the likelihood is at

    sigma^2 = (1 / (D - q)) sum_{j > q} l_j,      W = U_q (L_q - sigma^2 I)^{1/2}  (up to rotation),

where the mean log-likelihood per example is

    L = -1/2 [D log(2 pi) + sum_{j <= q} log l_j + (D - q) log sigma^2 + D].

This is what a linear VAE with a shared learned Gaussian scale can reach at best: its ELBO equals
the PPCA log-likelihood at the optimum because, with W's columns orthogonal, the exact posterior
N(M^{-1} W^T (x - mu), sigma^2 M^{-1}), M = W^T W + sigma^2 I_q = L_q, is diagonal (Lucas et al.
2019, "Don't blame the ELBO!"). Per latent dimension j of that posterior:

    Var_x(E[z_j | x]) = 1 - sigma^2 / l_j,    E_x KL(q(z_j|x) || N(0, 1)) = 1/2 log(l_j / sigma^2),

the quantities that active units and the KL per dimension measure on a trained VAE.
Everything is float64 numpy, in nats per example.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def ppca_fit(x: np.ndarray, q: int, active_threshold: float) -> dict[str, Any]:
    """The ML PPCA solution with q latent dimensions for x [N, ...] (flattened to [N, D]).

    Returns mean [D], W [D, q], sigma2, eigenvalues [D] (descending), log_likelihood (mean
    per example over x), kl_per_dim [q], posterior_mean_var [q] and active_units (dimensions
    with posterior_mean_var > active_threshold, the VAE's definition).
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    n, d = x.shape
    if not 0 < q < d:
        raise ValueError(f"q must be in [1, {d - 1}] for D = {d}, got {q}")
    mean = x.mean(axis=0)
    centred = x - mean
    eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / n)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    sigma2 = float(eigenvalues[q:].mean())
    top = eigenvalues[:q]
    # l_j >= sigma^2 for j <= q because sigma^2 averages the smaller eigenvalues; the clip only
    # guards round-off when they are equal.
    w = vectors[:, :q] * np.sqrt(np.clip(top - sigma2, 0.0, None))
    log_likelihood = -0.5 * (
        d * math.log(2 * math.pi) + np.log(top).sum() + (d - q) * math.log(sigma2) + d
    )
    posterior_mean_var = 1.0 - sigma2 / top
    return {
        "mean": mean,
        "W": w,
        "sigma2": sigma2,
        "eigenvalues": eigenvalues,
        "log_likelihood": float(log_likelihood),
        "kl_per_dim": 0.5 * np.log(top / sigma2),
        "posterior_mean_var": posterior_mean_var,
        "active_units": int(np.sum(posterior_mean_var > active_threshold)),
    }


def gaussian_log_likelihood(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    """Mean over examples of log N(x_n; mean, cov) for x [N, ...] flattened to [N, D]."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    d = x.shape[1]
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, (x - mean).T)  # [D, N]: L^{-1} (x - mean)
    log_det = 2.0 * np.log(np.diag(chol)).sum()
    return float(np.mean(-0.5 * (d * math.log(2 * math.pi) + log_det + (white**2).sum(0))))


def ppca_log_likelihood(x: np.ndarray, fit: dict[str, Any]) -> float:
    """Mean log-likelihood per example of x (e.g. a held-out split) under a ppca_fit result."""
    w = fit["W"]
    cov = w @ w.T + fit["sigma2"] * np.eye(len(w))
    return gaussian_log_likelihood(x, fit["mean"], cov)
