"""Synthetic data with a known intrinsic dimension k, generated deterministically from a seed.

linear (probabilistic PCA, Tipping & Bishop 1999):
    z ~ N(0, I_k),  x = W z + mu + sigma * eps,  eps ~ N(0, I_D),
    W = U diag(s) with U [D, k] orthonormal columns, so W's singular values are exactly the
    requested spectrum s and Cov(x) = W W^T + sigma^2 I_D.
manifold (a smooth nonlinear embedding, random Fourier features of z):
    z ~ N(0, I_k),  x = clip(0.5 + 0.5 * cos(Omega z + phi) + sigma * eps, 0, 1),
    Omega [D, k] ~ N(0, 1 / lengthscale^2), phi [D] ~ U[0, 2 pi).
    The noise-free map z -> 0.5 + 0.5 cos(Omega z + phi) is smooth with a Jacobian of rank k
    (almost surely, D >= k), so the data lie near a k-dimensional manifold in [0, 1]^D.

Each generator returns x [N, D] (float64) and the parameters an analysis needs (k, W or
Omega/phi, sigma), which the run records in provenance.json. Parameters are drawn before the
latents and the noise, so they do not depend on num_examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def orthonormal_columns(rng: np.random.Generator, dim: int, k: int) -> np.ndarray:
    """A random [dim, k] matrix with orthonormal columns (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, k)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def linear(
    rng: np.random.Generator,
    num_examples: int,
    dim: int,
    spectrum: Sequence[float],
    offset: float,
    noise_std: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """PPCA data x = W z + mu + sigma eps with singular values of W equal to spectrum (k = len)."""
    k = len(spectrum)
    w = orthonormal_columns(rng, dim, k) * np.asarray(spectrum, np.float64)
    z = rng.standard_normal((num_examples, k))
    x = z @ w.T + offset + noise_std * rng.standard_normal((num_examples, dim))
    return x, {
        "kind": "linear",
        "latent_dim": k,
        "spectrum": [float(s) for s in spectrum],
        "W": w.tolist(),
        "mu": float(offset),
        "noise_std": float(noise_std),
        "model": "x = W z + mu + noise_std * eps; z ~ N(0, I_k), eps ~ N(0, I_D)",
    }


def manifold_mean(z: np.ndarray, omega: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """The noise-free embedding 0.5 + 0.5 cos(Omega z + phi): z [N, k] -> [N, D] in [0, 1]."""
    return 0.5 + 0.5 * np.cos(z @ omega.T + phi)


def manifold(
    rng: np.random.Generator,
    num_examples: int,
    dim: int,
    latent_dim: int,
    lengthscale: float,
    noise_std: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """x = clip(manifold_mean(z) + sigma eps, 0, 1) with z ~ N(0, I_k)."""
    omega = rng.standard_normal((dim, latent_dim)) / lengthscale
    phi = rng.uniform(0.0, 2.0 * np.pi, dim)
    z = rng.standard_normal((num_examples, latent_dim))
    noise = noise_std * rng.standard_normal((num_examples, dim))
    x = np.clip(manifold_mean(z, omega, phi) + noise, 0.0, 1.0)
    return x, {
        "kind": "manifold",
        "latent_dim": latent_dim,
        "Omega": omega.tolist(),
        "phi": phi.tolist(),
        "lengthscale": float(lengthscale),
        "noise_std": float(noise_std),
        "model": "x = clip(0.5 + 0.5 cos(Omega z + phi) + noise_std * eps, 0, 1); z ~ N(0, I_k)",
    }


def generate(cfg: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Data for the `data.synthetic` config section: x [N, H, W, C] float32 and its parameters."""
    shape = tuple(cfg.shape)
    dim = int(np.prod(shape))
    rng = np.random.default_rng(cfg.seed)
    if cfg.kind == "linear":
        spectrum = list(cfg.spectrum) or [1.0] * cfg.latent_dim
        x, info = linear(rng, cfg.num_examples, dim, spectrum, cfg.offset, cfg.noise_std)
    else:
        x, info = manifold(
            rng, cfg.num_examples, dim, cfg.latent_dim, cfg.lengthscale, cfg.noise_std
        )
    return x.reshape(cfg.num_examples, *shape).astype(np.float32), {"seed": cfg.seed, **info}
