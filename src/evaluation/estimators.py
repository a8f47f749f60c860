"""Sampling estimators for saved models: the IWAE bound and the mutual information I(x; z).

Notation: x [batch, H, W, C], q(z|x) = N(mean, diag(exp(logvar))) with mean, logvar [batch, D],
p(z) = N(0, I_D). All quantities are in nats. Every function is pure and jit-compatible; noise
comes from the key passed in.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from src.training.losses import LOG_2PI, importance_log_weights, log_normal_diag


def chunked_log_mean_exp(
    log_weights: Callable[[jax.Array], jax.Array], num_samples: int, chunk_size: int
) -> jax.Array:
    """log (1/k) sum_{s<k} exp(w_s) with w drawn chunk by chunk and a running log-sum-exp.

    Only one chunk of log-weights (and of whatever produces them) is alive at a time, so k is
    limited by time, not memory. Samples past k in the last chunk are masked out.

    Args:
      log_weights: chunk index c (int32 scalar) -> [chunk_size, ...] log-weights of samples
        c * chunk_size ... (c + 1) * chunk_size - 1.
      num_samples: k >= 1.
      chunk_size: samples per call of log_weights.
    Returns:
      [...], the log mean of the k weights.
    """
    num_chunks = -(-num_samples // chunk_size)
    shape = jax.eval_shape(log_weights, jnp.int32(0))
    valid_shape = (chunk_size,) + (1,) * (len(shape.shape) - 1)

    def body(c: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        running_max, running_sum = carry
        w = log_weights(c)
        valid = (c * chunk_size + jnp.arange(chunk_size)).reshape(valid_shape) < num_samples
        w = jnp.where(valid, w, -jnp.inf)
        new_max = jnp.maximum(running_max, jnp.max(w, axis=0))
        # exp(-inf - finite) = 0: the first chunk always holds a valid sample.
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(
            jnp.exp(w - new_max), axis=0
        )
        return new_max, running_sum

    init = (
        jnp.full(shape.shape[1:], -jnp.inf, shape.dtype),
        jnp.zeros(shape.shape[1:], shape.dtype),
    )
    running_max, running_sum = jax.lax.fori_loop(0, num_chunks, body, init)
    return running_max + jnp.log(running_sum) - math.log(num_samples)


def iwae_log_likelihood(
    model: Any,
    x: jax.Array,
    key: jax.Array,
    num_samples: int,
    chunk_size: int,
) -> jax.Array:
    """Importance-weighted bound L_k(x) = log (1/k) sum_s w_s <= log p(x) (Burda et al. 2016).

    L_1 is the single-sample ELBO; E[L_k] increases with k and tends to log p(x) as k -> inf,
    so -L_k is an upper-bound estimate of the NLL. Chunk c draws its noise from
    fold_in(key, c), so a smaller k uses a prefix of the same samples.

    A hierarchical model draws z_s = (z_1..z_L) from q(z|x) group by group and weighs it with
    log p(x, z_1..L) - log q(z_1..L|x) (HierarchicalVAE.importance_terms).

    Args:
      model: has encode(x) -> (mean, logvar) [B, D], decode(z) -> outputs, nll(outputs, x);
        or importance_terms(x, eps [S, B, U]) and latent_units (hierarchical).
      x: [B, H, W, C].
    Returns:
      [B] L_k(x) in nats.
    """
    chunk = min(chunk_size, num_samples)
    if hasattr(model, "importance_terms"):  # hierarchical: z_s over all groups, ancestrally

        def hierarchical_weights(c: jax.Array) -> jax.Array:
            shape = (chunk, x.shape[0], model.latent_units)
            eps = jax.random.normal(jax.random.fold_in(key, c), shape, jnp.float32)
            return model.importance_terms(x, eps)[0]

        return chunked_log_mean_exp(hierarchical_weights, num_samples, chunk)
    mean, logvar = model.encode(x)

    def log_weights(c: jax.Array) -> jax.Array:
        eps = jax.random.normal(jax.random.fold_in(key, c), (chunk, *mean.shape), mean.dtype)
        return importance_log_weights(model, x, mean, logvar, eps)[0]

    return chunked_log_mean_exp(log_weights, num_samples, chunk)


@functools.partial(jax.jit, static_argnames=("samples_per_example", "row_chunk"))
def mutual_information(
    key: jax.Array, means: jax.Array, logvars: jax.Array, samples_per_example: int, row_chunk: int
) -> jax.Array:
    """I(x; z) under q(x, z) = p_data(x) q(z|x), p_data uniform over the N given examples.

    I = E_x E_{q(z|x)} [log q(z|x) - log q(z)],  q(z) = (1/N) sum_n q(z|x_n)  (the aggregate
    posterior; Hoffman & Johnson 2016, estimator of He et al. 2019). z is drawn
    samples_per_example times from each q(z|x_i), and log q(z|x_i) is taken at the sample, so
    every term is <= log N (q(z) >= q(z|x_i) / N) and collapsed posteriors give exactly 0.
    Hence 0 <= I <= log N in expectation.

    Args:
      means, logvars: [N, D] posterior parameters of the N examples.
      row_chunk: samples compared with all N posteriors at once (memory ~ row_chunk * N * D).
    Returns:
      scalar I(x; z) in nats.
    """
    n, dim = means.shape
    eps = jax.random.normal(key, (samples_per_example, n, dim), means.dtype)
    z = (means + jnp.exp(0.5 * logvars) * eps).reshape(-1, dim)
    log_q_own = -0.5 * jnp.sum(jnp.square(eps) + logvars + LOG_2PI, axis=-1).reshape(-1)

    def log_aggregate(z_row: jax.Array) -> jax.Array:
        return jax.nn.logsumexp(log_normal_diag(z_row, means, logvars)) - math.log(n)

    log_q_marginal = jax.lax.map(log_aggregate, z, batch_size=row_chunk)
    return jnp.mean(log_q_own - log_q_marginal)
