"""Latent regularization: the KL weight schedule (beta, warm-up) and free bits, as pure functions.

Optimized loss per example:  recon + w(t) * sum_d max(lambda, KL_d),  where t = state.step (updates
already applied), KL_d is the batch-mean KL of dimension d and lambda = training.kl.free_bits.
The logged ELBO ignores both: it is always -(recon + sum_d KL_d).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def kl_weight(
    step: jax.Array | int,
    *,
    beta: float,
    warmup: str,
    warmup_steps: int,
    cycle_steps: int,
    cycle_ramp: float,
) -> jax.Array:
    """The KL weight w(t) at step t (float32 scalar, traceable under jit).

    none:      w(t) = beta.
    linear:    w(t) = beta * min(1, t / warmup_steps)  (Bowman et al. 2016; Sonderby et al. 2016).
    cyclical:  tau = (t mod cycle_steps) / cycle_steps,
               w(t) = beta * min(1, tau / cycle_ramp)  (Fu et al. 2019, "Cyclical Annealing
               Schedule", NAACL; cycle_ramp is their R, the share of a cycle spent rising).
    """
    t = jnp.asarray(step, jnp.float32)
    if warmup == "linear":
        frac = t / warmup_steps
    elif warmup == "cyclical":
        frac = jnp.mod(t, cycle_steps) / cycle_steps / cycle_ramp
    elif warmup == "none":
        frac = jnp.ones((), jnp.float32)
    else:
        raise ValueError(f"unknown KL warm-up {warmup!r}")  # the config loader rejects it first
    return beta * jnp.minimum(1.0, frac)


def kl_weight_from_config(cfg: Any, step: jax.Array | int) -> jax.Array:
    """kl_weight with its settings taken from the `training.kl` config section."""
    return kl_weight(
        step,
        beta=cfg.beta,
        warmup=cfg.warmup,
        warmup_steps=cfg.warmup_steps,
        cycle_steps=cfg.cycle_steps,
        cycle_ramp=cfg.cycle_ramp,
    )


def free_bits_kl(kl_per_dim: jax.Array, floor: float, active: jax.Array | None) -> jax.Array:
    """sum_d max(floor, KL_d): the KL term with a per-dimension floor (Kingma et al. 2016, IAF,
    Sec. 5 "free bits"). A dimension below the floor gets no gradient, so the encoder is not
    pushed to collapse it further.

    Args:
      kl_per_dim: [D] batch-mean KL per dimension (nats).
      floor: lambda in nats per dimension; 0 gives the plain sum.
      active: optional [D] bool mask of dimensions whose KL is above the floor, computed on the
        *global* batch; under data parallelism it makes max(floor, .) act on the global mean
        rather than on each device's shard. None: decide from kl_per_dim itself.
    """
    if active is None:
        active = kl_per_dim > floor
    return jnp.sum(jnp.where(active, kl_per_dim, floor))
