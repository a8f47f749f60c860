"""The pure, jit-compiled train and eval steps.

train_step(state, batch, key, active) -> (state, metrics). `backend` picks how the step is spread
over the devices of the mesh axis "data":

- jit (default): one program over the global batch, state replicated and batch split on its
  leading axis (NamedSharding); XLA inserts the cross-device sums, e.g. of the gradients.
- shard_map, pmap: the same body runs on each device's rows and averages gradients and metrics
  itself (lax.pmean). pmap keeps the state stacked [devices, ...] (see
  src/training/device/parallel.py:to_backend) and takes the batch reshaped to [devices, batch / devices, ...].

All noise (reparameterization, dynamic binarization) is drawn for the *global* batch before the
split, so the numbers do not depend on how many devices share the batch or on the backend (up to
the order of the floating-point sums across devices).

training.objective picks the bound that is optimized: the ELBO (the single-sample estimate with
the analytic KL, weighted and floored by training.kl) or the IWAE bound L_k with
k = training.iwae_samples (Burda et al. 2016), whose encoder gradient is either the standard
reparameterized one or DReG (Tucker et al. 2019, "Doubly Reparameterized Gradient Estimators
for Monte Carlo Objectives"). k = 1 is the ELBO and runs the ELBO's code.

The one exception is transformer dropout (model.transformer.dropout > 0) under shard_map and
pmap: each device draws its masks from fold_in(dropout_key, device index), so those masks, and
the numbers, depend on the device count. jit draws the global batch's masks as device 0 does,
so on one device all three backends agree.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from src.data.pipeline import binarize
from src.training.device.parallel import AXIS, split_on_devices
from src.training.keys import device_key, dropout_key, noise_keys
from src.training.kl import free_bits_kl, kl_weight_from_config
from src.training.losses import (
    decoder_log_probs,
    gaussian_kl,
    group_sums,
    importance_log_weights,
    iwae_bound,
    log_normal_diag,
    vae_terms,
)
from src.training.state import TrainState, update_ema

StepFn = Callable[  # (state, batch, key, active: a bool scalar or Python bool)
    [TrainState, jax.Array, jax.Array, jax.Array | bool], tuple[TrainState, dict[str, jax.Array]]
]


class Objective(NamedTuple):
    """The optimized bound: training.objective, training.iwae_samples, training.iwae_gradient."""

    name: str  # elbo | iwae
    samples: int  # k of the IWAE bound
    gradient: str  # standard | dreg (encoder gradient of the IWAE bound)

    @classmethod
    def from_config(cls, training: Any) -> Objective:
        return cls(training.objective, training.iwae_samples, training.iwae_gradient)

    @property
    def is_iwae(self) -> bool:
        """True when the step optimizes L_k with k > 1 (k = 1 is the ELBO)."""
        return self.name == "iwae" and self.samples > 1

    def describe(self) -> str:
        """'elbo' or 'iwae k=5 (dreg)', for the run record."""
        return f"iwae k={self.samples} ({self.gradient})" if self.is_iwae else "elbo"


class Stability(NamedTuple):
    """The stability kit of deep VAEs: training.ema.decay and training.skip_grad_norm (0: off)."""

    ema_decay: float  # EMA of the params after each applied update (state.ema)
    skip_grad_norm: float  # drop updates whose gradient norm is at least this

    @classmethod
    def from_config(cls, training: Any) -> Stability:
        return cls(float(training.ema.decay), float(training.skip_grad_norm))


def draw_noise(
    key: jax.Array, x: jax.Array, latent_dim: int, dynamic_binarize: bool, samples: int
) -> tuple[jax.Array, jax.Array]:
    """Returns (possibly re-binarized x, eps) from one step key.

    eps is [batch, latent_dim] for one sample per example, [batch, samples, latent_dim] for
    more: batch first either way, so it is split over the devices like x.
    """
    k_eps, k_bin = noise_keys(key)
    if dynamic_binarize:
        x = binarize(k_bin, x)
    shape = (x.shape[0], latent_dim) if samples == 1 else (x.shape[0], samples, latent_dim)
    return x, jax.random.normal(k_eps, shape, x.dtype)


def per_group(metrics: dict[str, jax.Array], model: Any) -> dict[str, jax.Array]:
    """A hierarchical model's metrics log kl_per_group [L] (nats, z_1 first) in place of the
    per-unit kl_per_dim, which a convolutional hierarchy has thousands of; others unchanged."""
    sizes = getattr(model, "group_sizes", None)
    if sizes is None:
        return metrics
    out = {k: v for k, v in metrics.items() if k != "kl_per_dim"}
    out["kl_per_group"] = group_sums(metrics["kl_per_dim"], sizes)
    return out


def iwae_metrics(log_w: jax.Array, log_px_z: jax.Array, kl: jax.Array):
    """The IWAE loss (-mean L_k) and the metrics logged for every objective.

    recon, kl and elbo are the single-sample ELBO of the first sample with the analytic KL
    (kl [batch, D]: its per-dimension terms), as the ELBO objective logs them; iwae_bound is
    the batch mean of L_k.
    """
    bound = iwae_bound(log_w).mean()
    recon = -log_px_z[0].mean()
    kl_per_dim = kl.mean(axis=0)
    kl_sum = kl_per_dim.sum()
    return -bound, {
        "loss": -bound,
        "recon": recon,
        "kl": kl_sum,
        "elbo": -(recon + kl_sum),
        "kl_per_dim": kl_per_dim,
        "iwae_bound": bound,
    }


def iwae_grads(
    graphdef: nnx.GraphDef,
    params: Any,
    x: jax.Array,
    eps: jax.Array,
    key: jax.Array,
    gradient: str,
) -> tuple[Any, dict[str, jax.Array]]:
    """Gradient of -mean L_k and the metrics; eps [batch, k, D].

    standard: the reparameterized gradient of L_k in every parameter (Burda et al. 2016).
    dreg: the decoder's gradient is the same; the encoder's is
      sum_s w~_s^2 d log w_s / d z_s * d z_s / d phi  (w~ the normalized weights),
    with log q(z|x) evaluated at stopped encoder outputs, so the encoder is reached only
    through z (Tucker et al. 2019, eq. 5). Computed in one forward and one backward pass:
    the cotangent reaching z from log w is multiplied by w~ before it enters the encoder.
    """
    k_enc, k_dec = jax.random.split(key)
    eps = jnp.swapaxes(eps, 0, 1)  # [k, batch, D]

    if gradient == "standard":

        def loss_fn(p: Any) -> tuple[jax.Array, dict]:
            model = nnx.merge(graphdef, p)
            if hasattr(model, "importance_terms"):  # hierarchical: log w over all groups
                log_w, log_px_z, kl = model.importance_terms(x, eps, k_dec)
                loss, metrics = iwae_metrics(log_w, log_px_z, kl)
                return loss, per_group(metrics, model)
            mean, logvar = model.encode(x, k_enc)
            log_w, log_px_z = importance_log_weights(model, x, mean, logvar, eps, k_dec)
            return iwae_metrics(log_w, log_px_z, gaussian_kl(mean, logvar))

        return jax.grad(loss_fn, has_aux=True)(params)

    if hasattr(nnx.merge(graphdef, params), "dreg_sample"):  # bottom-up hierarchical
        return hierarchical_dreg_grads(graphdef, params, x, eps)

    def sample_z(p: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        mean, logvar = nnx.merge(graphdef, p).encode(x, k_enc)
        return mean + jnp.exp(0.5 * logvar) * eps, (mean, logvar)

    z, z_vjp, (mean, logvar) = jax.vjp(sample_z, params, has_aux=True)
    q_mean, q_logvar = jax.lax.stop_gradient((mean, logvar))

    def log_weights(p: Any, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        log_px_z, log_pz = decoder_log_probs(nnx.merge(graphdef, p), x, z, k_dec)
        return log_px_z + log_pz - log_normal_diag(z, q_mean, q_logvar), log_px_z

    log_w, w_vjp, log_px_z = jax.vjp(log_weights, params, z, has_aux=True)
    normalized = jax.nn.softmax(log_w, axis=0)  # w~_s, [k, batch]
    decoder_grads, z_cotangent = w_vjp(-normalized / x.shape[0])
    (encoder_grads,) = z_vjp(z_cotangent * normalized[..., None])
    grads = jax.tree.map(jnp.add, decoder_grads, encoder_grads)
    return grads, iwae_metrics(log_w, log_px_z, gaussian_kl(mean, logvar))[1]


def hierarchical_dreg_grads(
    graphdef: nnx.GraphDef, params: Any, x: jax.Array, eps: jax.Array
) -> tuple[Any, dict[str, jax.Array]]:
    """DReG of iwae_grads for a bottom-up hierarchical model, eps [k, batch, U]: z over all
    groups is a reparameterization of the encoder parameters alone (q(z_l|z_{l-1}) uses no
    decoder parameter), so the derivation holds with z the concatenated groups; log q(z|x) is
    evaluated at stopped encoder parameters (HierarchicalVAE.dreg_log_weights)."""
    z, z_vjp = jax.vjp(lambda p: nnx.merge(graphdef, p).dreg_sample(x, eps), params)

    def log_weights(p: Any, z: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        return nnx.merge(graphdef, p).dreg_log_weights(x, z)

    log_w, w_vjp, (log_px_z, kl) = jax.vjp(log_weights, params, z, has_aux=True)
    normalized = jax.nn.softmax(log_w, axis=0)  # w~_s, [k, batch]
    decoder_grads, z_cotangent = w_vjp(-normalized / x.shape[0])
    (encoder_grads,) = z_vjp(z_cotangent * normalized[..., None])
    grads = jax.tree.map(jnp.add, decoder_grads, encoder_grads)
    metrics = iwae_metrics(log_w, log_px_z, kl)[1]
    return grads, per_group(metrics, nnx.merge(graphdef, params))


def global_mean(tree: Any, axis: str | None) -> Any:
    """Batch means of one device's rows -> the global batch's (lax.pmean over the mesh axis).
    axis None: the step already sees the global batch (jit), the means are global."""
    return tree if axis is None else jax.lax.pmean(tree, axis)


def elbo_grads(
    graphdef: nnx.GraphDef,
    params: Any,
    x: jax.Array,
    eps: jax.Array,
    key: jax.Array,
    weight: jax.Array,
    kl: Any,
    axis: str | None,
) -> tuple[Any, dict[str, jax.Array]]:
    """Gradient of the ELBO loss recon + weight * sum_d max(free_bits, KL_d) and the metrics;
    eps [batch, D], kl the `training.kl` section, axis as in global_mean.

    Free bits floor each dimension's batch-mean KL (src/training/kl.py); which dimensions are
    above the floor is decided from the global batch's mean, with no gradient through the
    decision. elbo = -(recon + sum_d KL_d) is logged whatever the weight and floor.
    """

    def loss_fn(p: Any) -> tuple[jax.Array, dict]:
        model = nnx.merge(graphdef, p)
        terms = vae_terms(model, x, eps, key)
        recon = terms.recon.mean()
        kl_per_dim = terms.kl_per_dim.mean(axis=0)
        kl_sum = kl_per_dim.sum()
        if kl.free_bits > 0:
            global_kl = global_mean(jax.lax.stop_gradient(kl_per_dim), axis)
            kl_term = free_bits_kl(kl_per_dim, kl.free_bits, global_kl > kl.free_bits)
        else:
            kl_term = kl_sum
        loss = recon + weight * kl_term
        metrics = {
            "loss": loss,
            "recon": recon,
            "kl": kl_sum,
            "elbo": -(recon + kl_sum),
            "kl_per_dim": kl_per_dim,
        }
        return loss, per_group(metrics, model)

    return jax.grad(loss_fn, has_aux=True)(params)


def apply_if_finite(
    tx: optax.GradientTransformation,
    state: TrainState,
    grads: Any,
    metrics: dict[str, jax.Array],
    nan_policy: str,
    active: jax.Array | bool,
    stability: Stability,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """The optimizer update of state by grads, applied only when loss and grad_norm are finite
    and `active` (a bool scalar) is true. An inactive step returns state unchanged: the no-op
    steps after a stop (src/training/multistep.py).

    stability.skip_grad_norm > 0 also drops a finite update whose gradient norm is at least
    that (VDVAE's skip_threshold; Child 2021): the step counter advances, its metrics are kept,
    and metrics["skipped_grad_norm"] (float32 0 or 1) counts it. stability.ema_decay > 0
    updates state.ema after each applied update (update_ema).

    nan_policy "skip": the step counter still advances (the next step sees the next batch and
    key) and the metrics of the dropped step are zeroed, so interval sums stay finite.
    nan_policy "stop": the whole state stays at old, the last good step, and the metrics keep
    the offending values for the run record. Because state.step then lags behind the step
    number, the later steps of the run are no-ops (src/training/multistep.py) until the loop
    sees the lag at its next boundary and stops.
    Adds metrics["nonfinite"] (float32 0 or 1).

    The update runs inside lax.cond, so a finite step costs one scalar test instead of a
    select over params and both Adam moments (and the state's buffers are updated in place).
    Not optax.apply_if_finite: it checks the gradients only (not the loss), adds counters to
    the optimizer state (a different checkpoint structure: saved runs would not restore), and
    cannot hold the step counter back for nan_policy stop.
    """
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    apply = finite & active
    advance = apply if nan_policy == "stop" else active
    if stability.skip_grad_norm > 0:
        large = finite & (metrics["grad_norm"] >= stability.skip_grad_norm)
        apply = apply & jnp.logical_not(large)

    def update(state: TrainState) -> tuple[Any, Any, Any]:
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return params, opt_state, update_ema(state.ema, params, stability.ema_decay)

    params, opt_state, ema = jax.lax.cond(
        apply, update, lambda state: (state.params, state.opt_state, state.ema), state
    )
    step = jnp.where(advance, state.step + 1, state.step)
    if nan_policy == "skip":
        metrics = jax.tree.map(lambda v: jnp.where(finite, v, jnp.zeros_like(v)), metrics)
    metrics["nonfinite"] = jnp.logical_not(finite).astype(jnp.float32)
    if stability.skip_grad_norm > 0:
        metrics["skipped_grad_norm"] = (large & active).astype(jnp.float32)
    return TrainState(step, params, opt_state, ema), metrics


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    *,
    backend: str,
    latent_dim: int,
    kl: Any,
    dynamic_binarize: bool,
    nan_policy: str,
    objective: Objective,
    stability: Stability,
) -> StepFn:
    """Builds the compiled step for `backend` (jit | shard_map | pmap); the state is donated.

    batch: [global_batch, ...] split over the mesh on its leading axis; key: the step's key;
    active: a bool scalar, false for a step that must leave the state as it is (see
    apply_if_finite).

    kl is the `training.kl` section: the KL weight w(step) is computed inside the step from
    state.step; the ELBO objective then optimizes recon + w * sum_d max(free_bits, KL_d)
    (see elbo_grads).

    objective iwae (k > 1): loss = -mean L_k (see iwae_grads); kl must then be the plain ELBO's
    (beta 1, no warm-up or free bits: checked with the config).

    A step whose loss or gradient norm is not finite is dropped (see apply_if_finite) and
    flagged with metrics["nonfinite"] = 1; stability: EMA and update skipping (Stability).
    """
    samples = objective.samples if objective.is_iwae else 1

    def body(
        state: TrainState,
        x: jax.Array,
        eps: jax.Array,
        key: jax.Array,
        active: jax.Array | bool,
        axis: str | None = None,
    ) -> tuple[TrainState, dict]:
        """One step on x: the global batch (jit, axis None), or this device's rows (shard_map
        and pmap, axis = the mesh axis, over which the body then averages itself)."""
        weight = kl_weight_from_config(kl, state.step)
        params, device = state.params, jnp.int32(0)
        if axis is not None:
            device = jax.lax.axis_index(axis)
            # Differentiate w.r.t. a per-device ("varying") copy of the replicated params:
            # under shard_map the gradient of a replicated input comes back already psum-ed
            # over the devices (the transpose of the implicit broadcast), which global_mean
            # would turn into devices x the mean gradient. Under pmap the cast changes nothing.
            params = jax.lax.pcast(params, axis, to="varying")
        key = device_key(key, device)  # dropout: each device its own masks (jit: one)
        if objective.is_iwae:
            grads, metrics = iwae_grads(graphdef, params, x, eps, key, objective.gradient)
        else:
            grads, metrics = elbo_grads(graphdef, params, x, eps, key, weight, kl, axis)
        grads, metrics = global_mean((grads, metrics), axis)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        metrics["kl_weight"] = weight
        return apply_if_finite(tx, state, grads, metrics, nan_policy, active, stability)

    def on_global_batch(body: Callable) -> StepFn:
        """(state, batch, key, active) -> body(state, x, eps, dropout_key, active), noise drawn
        for the batch."""

        def step(
            state: TrainState, batch: jax.Array, key: jax.Array, active: jax.Array | bool
        ) -> tuple:
            x, eps = draw_noise(key, batch, latent_dim, dynamic_binarize, samples)
            return body(state, x, eps, dropout_key(key), active)

        return step

    if backend == "jit":
        replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
        return jax.jit(
            on_global_batch(body),
            in_shardings=(replicated, split, replicated, replicated),
            out_shardings=(replicated, replicated),
            donate_argnums=0,
        )

    per_device = functools.partial(body, axis=AXIS)
    if backend == "shard_map":
        sharded = jax.shard_map(
            per_device,
            mesh=mesh,
            in_specs=(P(), P(AXIS), P(AXIS), P(), P()),
            out_specs=(P(), P()),
        )
        return jax.jit(on_global_batch(sharded), donate_argnums=0)

    n = mesh.size
    # out_axes None: metrics are identical on every device after pmean, return one copy.
    mapped = jax.pmap(
        per_device,
        axis_name=AXIS,
        in_axes=(0, 0, 0, None, None),  # the dropout key is shared; the body folds in the device
        devices=list(mesh.devices.flat),
        out_axes=(0, None),
        donate_argnums=0,
    )

    @functools.partial(jax.jit, out_shardings=split_on_devices(mesh))
    def per_device_inputs(batch: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, eps = draw_noise(key, batch, latent_dim, dynamic_binarize, samples)
        return x.reshape(n, -1, *x.shape[1:]), eps.reshape(n, -1, *eps.shape[1:])

    def pmap_step(
        state: TrainState, batch: jax.Array, key: jax.Array, active: jax.Array | bool
    ) -> tuple:
        return mapped(state, *per_device_inputs(batch, key), dropout_key(key), active)

    return pmap_step


def masked_moments(values: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Count, mean and sum of squared deviations per column of values [batch, U] over the rows
    with mask 1: a batch's share of a variance that the host combines exactly across batches
    (src/training/validation.py:combine_moments), without keeping [examples, U] arrays."""
    count = jnp.sum(mask)
    mean = jnp.sum(values * mask[:, None], axis=0) / jnp.maximum(count, 1.0)
    m2 = jnp.sum(jnp.square(values - mean) * mask[:, None], axis=0)
    return {"mean_count": count, "mean_mean": mean, "mean_m2": m2}


def make_eval_step(
    graphdef: nnx.GraphDef, mesh: Mesh, *, latent_dim: int
) -> Callable[[Any, jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]:
    """eval_step(params, batch, mask, key) -> masked sums and per-example posterior means (a
    hierarchical model: their masked moments, see masked_moments).

    Deterministic network (no dropout); only the reparameterization noise comes from key. The
    batch is scored as it is (evaluation splits are binarized once, src/data/pipeline.py).
    A batch split over the mesh is computed where it lies; XLA adds the sums over devices, and
    the outputs come back replicated, so every process can read them.
    """

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
    def eval_step(params: Any, batch: jax.Array, mask: jax.Array, key: jax.Array) -> dict:
        x, eps = draw_noise(key, batch, latent_dim, False, 1)
        model = nnx.merge(graphdef, params)
        terms = vae_terms(model, x, eps, None)
        out = {
            "recon_sum": jnp.sum(terms.recon * mask),
            "kl_per_dim_sum": jnp.sum(terms.kl_per_dim * mask[:, None], axis=0),
        }
        if hasattr(model, "group_sizes"):  # hierarchical: moments, not [batch, units] means
            out.update(masked_moments(terms.mean, mask))
        else:
            out["mean"] = terms.mean
        return out

    return eval_step
