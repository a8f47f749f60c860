"""Blocks of the hierarchical VAE (src/models/hierarchical.py): dense and convolutional.

Every block reads its sizes from a Stage (src/models/hier_plan.py); the heads that emit a
Gaussian return float32 (mean, logvar), whatever dtype the layers compute in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.linear import default_kernel_init

from src.models.gaussian import kl_normal, log_normal, log_normal_at_own_sample
from src.models.hier_plan import Stage
from src.models.mlp import ACTIVATIONS, MLP
from src.models.posterior import posterior_logvar


def split_gaussian(h: jax.Array, dim: int) -> tuple[jax.Array, jax.Array]:
    """The first 2 * dim channels of h as float32 (mean, logvar)."""
    h = h.astype(jnp.float32)
    return h[..., :dim], h[..., dim : 2 * dim]


# How a posterior head's raw scale becomes its log-variance: (model.scale_param,
# model.scale_floor), as for the plain VAE's encoder (src/models/posterior.py). Priors keep
# logvar = raw: scale_param is the posterior's parameterization.
Scale = tuple[str, float]


def split_posterior(h: jax.Array, dim: int, scale: Scale) -> tuple[jax.Array, jax.Array]:
    """split_gaussian for a posterior head: (mean, posterior_logvar(raw, *scale)); with exp the
    raw output is returned as it is, so exp is split_gaussian bit for bit."""
    mean, raw = split_gaussian(h, dim)
    return mean, posterior_logvar(raw, *scale)


class Bottleneck(nnx.Module):
    """VDVAE's block: 1x1 (c_in -> mid), k x k, k x k, 1x1 (mid -> c_out), each conv after the
    activation; residual adds the input (c_in == c_out)."""

    def __init__(
        self,
        c_in: int,
        mid: int,
        c_out: int,
        kernel: int,
        activation: str,
        residual: bool,
        zero_last: bool,
        *,
        rngs: nnx.Rngs,
    ):
        shapes = [(c_in, mid, 1), (mid, mid, kernel), (mid, mid, kernel), (mid, c_out, 1)]
        self.convs = nnx.List(
            [
                nnx.Conv(
                    a,
                    b,
                    (k, k),
                    padding="SAME",
                    kernel_init=(
                        nnx.initializers.zeros if zero_last and i == 3 else default_kernel_init
                    ),
                    rngs=rngs,
                )
                for i, (a, b, k) in enumerate(shapes)
            ]
        )
        self.activation = ACTIVATIONS[activation]
        self.residual = residual

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        for conv in self.convs:
            y = conv(self.activation(y))
        return x + y if self.residual else y


def body_net(
    stage: Stage,
    c_in: int,
    c_out: int,
    depth: int,
    bottleneck: float,
    kernel: int,
    activation: str,
    residual: bool,
    zero_last: bool,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """The stage's network c_in -> c_out: a Bottleneck (conv) or an MLP of `depth` hidden layers
    of the stage's width (mlp). A residual dense net applies the activation to its input first."""
    if stage.conv:
        mid = max(1, round(stage.width * bottleneck))
        return Bottleneck(c_in, mid, c_out, kernel, activation, residual, zero_last, rngs=rngs)
    net = MLP([c_in, *[stage.width] * depth, c_out], activation, zero_last, rngs=rngs)
    return Residual(net, activation) if residual else net


class Residual(nnx.Module):
    """h + net(activation(h))."""

    def __init__(self, net: nnx.Module, activation: str):
        self.net = net
        self.activation = ACTIVATIONS[activation]

    def __call__(self, h: jax.Array) -> jax.Array:
        return h + self.net(self.activation(h))


class TopDownBlock(nnx.Module):
    """One latent group of the top-down pass (Ladder VAE, NVAE, VDVAE's DecBlock).

    From the top-down state s (and the bottom-up activation a of the group's level):
      prior      (p_mean, p_logvar, f) = prior_net(s),  s <- s + f
      posterior  (q_mean, q_logvar)    = posterior_net([s_in, a])  (q_logvar through scale)
      z = q_mean + e^(q_logvar/2) eps (posterior), or p_mean + T e^(p_logvar/2) eps (prior, T the
      temperature), per group as use_posterior says;  s <- s + proj(z),  s <- res(s).
    Returns the new state, the analytic KL(q || p) per unit, log q(z) - log p(z) of the sample
    summed over the units (exact only where the posterior was sampled), and q_mean.
    """

    def __init__(
        self,
        stage: Stage,
        depth: int,
        bottleneck: float,
        kernel: int,
        activation: str,
        scale: Scale,
        *,
        rngs: nnx.Rngs,
    ):
        w, d = stage.width, stage.dim
        net = (depth, bottleneck, kernel, activation)
        self.dim = d
        self.scale = scale
        self.prior = body_net(stage, w, 2 * d + w, *net, False, True, rngs)
        self.posterior = body_net(stage, 2 * w, 2 * d, *net, False, False, rngs)
        self.project = (
            nnx.Conv(d, w, (1, 1), rngs=rngs) if stage.conv else nnx.Linear(d, w, rngs=rngs)
        )
        self.res = body_net(stage, w, w, *net, True, True, rngs)

    def __call__(
        self,
        state: jax.Array,
        act: jax.Array,
        eps: jax.Array,
        use_posterior: jax.Array,
        temperature: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        prior = self.prior(state)
        p_mean, p_logvar = split_gaussian(prior, self.dim)
        q_mean, q_logvar = split_posterior(
            self.posterior(jnp.concatenate([state, act.astype(state.dtype)], axis=-1)),
            self.dim,
            self.scale,
        )
        state = state + prior[..., 2 * self.dim :]
        z_q = q_mean + jnp.exp(0.5 * q_logvar) * eps
        z_p = p_mean + temperature * jnp.exp(0.5 * p_logvar) * eps
        z = jnp.where(use_posterior, z_q, z_p)
        state = self.res(state + self.project(z))
        per_example = tuple(range(1, eps.ndim))
        log_ratio = jnp.sum(
            log_normal_at_own_sample(eps, q_logvar) - log_normal(z, p_mean, p_logvar), per_example
        )
        return state, kl_normal(q_mean, q_logvar, p_mean, p_logvar), log_ratio, q_mean


def avg_pool(h: jax.Array, factor: int) -> jax.Array:
    """[N, H, W, C] -> [N, H / f, W / f, C], the mean of each f x f patch."""
    if factor == 1:
        return h
    n, height, width, c = h.shape
    return h.reshape(n, height // factor, factor, width // factor, factor, c).mean(axis=(2, 4))


def upsample(h: jax.Array, factor: int) -> jax.Array:
    """[N, H, W, C] -> [N, H f, W f, C], nearest neighbour."""
    if factor == 1:
        return h
    return jnp.repeat(jnp.repeat(h, factor, axis=1), factor, axis=2)
