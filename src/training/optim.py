"""Optax optimizer and learning-rate schedule from the `optimizer` config section."""

from __future__ import annotations

from typing import Any

import optax


def build_schedule(cfg: Any, peak_lr: float, total_steps: int) -> optax.Schedule:
    """constant, or linear warm-up to peak_lr then cosine decay to end_lr_fraction * peak_lr."""
    if cfg.schedule == "constant":
        return optax.constant_schedule(peak_lr)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak_lr,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(total_steps, cfg.warmup_steps + 1),
        end_value=peak_lr * cfg.end_lr_fraction,
    )


def build_optimizer(
    cfg: Any, peak_lr: float, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns the optax transform and its schedule.

    Order: global-norm clipping, then L2 weight decay added to the gradient (adam, adamax, sgd),
    then the update rule. adamw applies decoupled weight decay instead (Loshchilov & Hutter
    2019). adamax is Adam with the infinity norm, v_t = max(b2 v_{t-1}, |g_t|) (Kingma & Ba
    2015, Sec. 7.1; VDVAE's optimizer).
    """
    schedule = build_schedule(cfg, peak_lr, total_steps)
    parts: list[optax.GradientTransformation] = []
    if cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.type == "adamw":
        parts.append(
            optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
        )
    else:
        if cfg.weight_decay > 0:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))
        if cfg.type == "adam":
            parts.append(optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
        elif cfg.type == "adamax":
            parts.append(optax.adamax(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
        else:
            momentum = cfg.momentum if cfg.momentum > 0 else None
            parts.append(optax.sgd(schedule, momentum=momentum, nesterov=cfg.nesterov))
    return optax.chain(*parts), schedule
