"""Hierarchical VAEs: L latent groups z_1..z_L (z_L at the top), model.type = hierarchical.

Two inference structures (model.hierarchical.structure):

- bottom_up (Burda et al. 2016, Sec. 5): q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}) and
  p(z_L) p(z_{L-1}|z_L) ... p(z_1|z_2) p(x|z_1), each conditional a diagonal Gaussian from a
  dense net of `depth` hidden layers. Burda et al.'s two-layer model (784-200-200-100 |
  100-100-50, tanh) is groups [1, 1], group_dims [100, 50], widths [200, 100], depth 2.
- top_down (Ladder VAE, NVAE, VDVAE): a deterministic bottom-up pass over x keeps one
  activation per group; a top-down pass from a learned constant state then computes, for each
  group from the top, the prior p(z_l|z_>l) and the posterior q(z_l|x, z_>l) from the shared
  state (src/models/hier_blocks.py:TopDownBlock). Generation runs the same pass from the prior.

Per-unit terms of one pass with the groups sampled from the posterior:
- kl: top_down: the analytic KL(q(z_l|x, z_>l) || p(z_l|z_>l)) per unit, given the sampled
  upper groups (both Gaussian; exact since nothing above z_l depends on it). bottom_up: the
  top group's analytic KL(q(z_L|z_{L-1}) || N(0, I)); below it p(z_l|z_{l+1}) depends on a
  z_{l+1} drawn given z_l, so the term is the one-sample estimate log q(z_l|.) - log p(z_l|z_{l+1}).
  Either way sum_units kl is an unbiased estimate of KL(q(z|x) || p(z)) and the ELBO is
  -(recon + sum kl).
- log_ratio = log q(z_1..L|x) - log p(z_1..L) at the sample (for the IWAE weights).
- mean: the posterior means of each group given the sampled other groups (active units).

Blocks of a stage share their sizes and run as one scanned stack (src/models/stack.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from src.models.gaussian import kl_normal, log_normal, log_normal_at_own_sample
from src.models.hier_blocks import (
    Scale,
    TopDownBlock,
    avg_pool,
    body_net,
    split_gaussian,
    split_posterior,
    upsample,
)
from src.models.hier_plan import Stage, group_sizes, plan_stages
from src.models.likelihoods import Likelihood, build_likelihood
from src.models.mlp import ACTIVATIONS, MLP
from src.models.stack import Stack
from src.utils.errors import ConfigError


class Pass(NamedTuple):
    """One pass over N examples (N = samples x batch for the IWAE)."""

    outputs: jax.Array  # [N, H, W, C * K] likelihood parameters, float32
    kl: jax.Array  # [N, U] per-unit KL terms (see the module docstring)
    log_ratio: jax.Array  # [N] log q(z|x) - log p(z) at the sample
    mean: jax.Array  # [N, U] posterior means


def stage_slices(stages: Sequence[Stage]) -> list[slice]:
    """The units of each stage in the flat latent vector (z_1 first)."""
    out, start = [], 0
    for st in stages:
        out.append(slice(start, start + st.groups * st.units))
        start += st.groups * st.units
    return out


def to_groups(flat: jax.Array, stage: Stage) -> jax.Array:
    """[N, groups * units] -> [groups, N, *latent_shape]: a stage's groups first, for lax.scan."""
    return jnp.moveaxis(flat.reshape(flat.shape[0], stage.groups, *stage.latent_shape), 1, 0)


def to_flat(grouped: jax.Array) -> jax.Array:
    """Inverse of to_groups: [groups, N, ...] -> [N, groups * units]."""
    return jnp.moveaxis(grouped, 0, 1).reshape(grouped.shape[1], -1)


def sampling_step(dim: int, scale: Scale):
    """A scan step over dense posterior conditionals: (block, z_prev, eps) -> (z, (mean, logvar,
    z)) with (mean, logvar) = split_posterior(block(z_prev)) and z = mean + e^(logvar/2) eps."""

    def step(block: MLP, z: jax.Array, e: jax.Array) -> tuple:
        mean, logvar = split_posterior(block(z), dim, scale)
        z = mean + jnp.exp(0.5 * logvar) * e
        return z, (mean, logvar, z)

    return step


def gaussian_step(dim: int, scale: Scale | None = None):
    """A carry-free scan step: (block, (), z) -> ((), (mean, logvar) = block(z)); a posterior
    conditional's logvar goes through scale (split_posterior), a prior's (scale None) does not."""

    def step(block: MLP, carry: tuple, z: jax.Array) -> tuple:
        if scale is None:
            return carry, split_gaussian(block(z), dim)
        return carry, split_posterior(block(z), dim, scale)

    return step


M = TypeVar("M", bound=nnx.Module)
# A stage's posterior samples: (q_mean, q_logvar, z, eps), each [groups, N, dim].
Posterior = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def stopped(module: M) -> M:
    """A copy of module whose parameters are under stop_gradient."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, state))


class TopDownNet(nnx.Module):
    """The top_down structure over any body (mlp: dense blocks, conv: bottleneck blocks)."""

    def __init__(
        self,
        stages: Sequence[Stage],
        image_shape: Sequence[int],
        out_channels: int,
        depth: int,
        bottleneck: float,
        kernel: int,
        activation: str,
        scale: Scale,
        *,
        rngs: nnx.Rngs,
    ):
        self.stages = tuple(stages)
        self.conv = stages[0].conv
        self.out_shape = (*image_shape[:2], out_channels)
        net = (depth, bottleneck, kernel, activation)
        first, top = stages[0], stages[-1]
        if self.conv:
            self.stem: nnx.Module = nnx.Conv(
                image_shape[2], first.width, (kernel, kernel), padding="SAME", rngs=rngs
            )
            self.out: nnx.Module = nnx.Conv(first.width, out_channels, (1, 1), rngs=rngs)
        else:
            self.stem = nnx.Linear(math.prod(image_shape), first.width, rngs=rngs)
            self.out = MLP(
                [first.width, *[first.width] * depth, math.prod(self.out_shape)],
                activation,
                False,
                rngs=rngs,
            )
        self.activation = ACTIVATIONS[activation]

        def enc_block(st: Stage):
            return lambda r: body_net(st, st.width, st.width, *net, True, True, r)

        def dec_block(st: Stage):
            return lambda r: TopDownBlock(st, *net, scale, rngs=r)

        self.encoder = nnx.List([Stack(enc_block(st), st.groups, rngs=rngs) for st in stages])
        self.decoder = nnx.List([Stack(dec_block(st), st.groups, rngs=rngs) for st in stages])
        # Width changes between stages: enc_proj[s] maps stage s's width to s + 1's, dec_proj[s]
        # back from s + 1's to s's.
        self.enc_proj = nnx.List([self._project(a.width, b.width, rngs) for a, b in self.pairs()])
        self.dec_proj = nnx.List([self._project(b.width, a.width, rngs) for a, b in self.pairs()])
        self.top = nnx.Param(jnp.zeros((*top.size, top.width) if self.conv else (top.width,)))

    def pairs(self) -> list[tuple[Stage, Stage]]:
        return list(zip(self.stages[:-1], self.stages[1:], strict=True))

    def _project(self, a: int, b: int, rngs: nnx.Rngs) -> nnx.Module:
        return nnx.Conv(a, b, (1, 1), rngs=rngs) if self.conv else nnx.Linear(a, b, rngs=rngs)

    def activations(self, x: jax.Array) -> list[jax.Array]:
        """The deterministic bottom-up pass: per stage [groups, B, ...], the state after each of
        its blocks (group i of a stage reads the activation after block i)."""
        h = self.stem(x if self.conv else x.reshape(x.shape[0], -1))
        acts = []
        for s, st in enumerate(self.stages):
            if self.conv:
                h = avg_pool(h, st.factor)
            if s > 0:
                h = self.enc_proj[s - 1](h)
            h, ys = self.encoder[s].scan(lambda block, c, _: (block(c), block(c)), h, None)
            acts.append(ys)
        return acts

    def top_down(
        self,
        acts: list[jax.Array],
        eps: jax.Array,
        use_posterior: jax.Array,
        temperature: jax.Array,
    ) -> Pass:
        """The top-down pass over N = eps.shape[0] examples; acts as from activations (for N
        examples), use_posterior [L] bool per group (z_1 first), temperature of the prior draws."""
        n = eps.shape[0]
        state = jnp.broadcast_to(self.top[...], (n, *self.top.shape))
        kls: list[jax.Array] = []
        means: list[jax.Array] = []
        log_ratio = jnp.zeros((n,), jnp.float32)
        slices = stage_slices(self.stages)
        first_group = 0
        firsts = []
        for st in self.stages:
            firsts.append(first_group)
            first_group += st.groups
        for s in reversed(range(len(self.stages))):
            st = self.stages[s]
            if s < len(self.stages) - 1:
                above = self.stages[s + 1]
                state = self.dec_proj[s](upsample(state, above.factor) if self.conv else state)
            inputs = (
                acts[s][::-1],
                to_groups(eps[:, slices[s]], st)[::-1],
                use_posterior[firsts[s] : firsts[s] + st.groups][::-1],
            )

            def step(block: TopDownBlock, state: jax.Array, inp: tuple) -> tuple:
                act, e, post = inp
                state, kl, ratio, mean = block(state, act, e, post, temperature)
                return state, (kl, ratio, mean)

            state, (kl, ratio, mean) = self.decoder[s].scan(step, state, inputs)
            kls.insert(0, to_flat(kl[::-1]))
            means.insert(0, to_flat(mean[::-1]))
            log_ratio = log_ratio + ratio.sum(axis=0)
        if self.conv:
            state = upsample(state, self.stages[0].factor)
            outputs = self.out(self.activation(state))
        else:
            outputs = self.out(self.activation(state)).reshape(n, *self.out_shape)
        return Pass(
            outputs.astype(jnp.float32),
            jnp.concatenate(kls, axis=1),
            log_ratio,
            jnp.concatenate(means, axis=1),
        )

    def __call__(
        self, x: jax.Array, eps: jax.Array, use_posterior: jax.Array, temperature: jax.Array
    ) -> Pass:
        """x [B, ...]; eps [N, U] with N a multiple of B (samples s * B + b of example b)."""
        acts = self.activations(x)
        reps = eps.shape[0] // x.shape[0]
        if reps > 1:
            acts = [jnp.tile(a, (1, reps) + (1,) * (a.ndim - 2)) for a in acts]
        return self.top_down(acts, eps, use_posterior, temperature)

    def generate(
        self, eps: jax.Array, temperature: jax.Array, x: jax.Array | None, keep: int
    ) -> jax.Array:
        """Likelihood parameters of N = eps.shape[0] draws: the top `keep` groups from the
        posterior of x [N, ...] (none if keep is 0), the groups below from the prior at
        temperature (the same top-down pass, fed by the prior)."""
        n = eps.shape[0]
        groups = sum(st.groups for st in self.stages)
        if keep and x is not None:
            acts = self.activations(x)
        else:
            acts = [
                jnp.zeros(
                    (st.groups, n, *st.size, st.width) if self.conv else (st.groups, n, st.width)
                )
                for st in self.stages
            ]
        use_posterior = jnp.arange(groups) >= groups - keep
        return self.top_down(acts, eps, use_posterior, temperature).outputs


class BottomUpNet(nnx.Module):
    """The bottom_up structure with dense conditionals (Burda et al. 2016).

    Stage s: enc_first[s] gives q(first group | the stage below's last group, or x);
    enc_rest[s] (a stack) q(z_i | z_{i-1}) within the stage; dec_rest[s] p(z_{i-1} | z_i) within
    the stage; dec_down[s] (s > 0) p(last group of stage s - 1 | first group of s), with stage s's
    width; out maps z_1 to the likelihood parameters with stage 0's width.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        image_shape: Sequence[int],
        out_channels: int,
        depth: int,
        activation: str,
        scale: Scale,
        *,
        rngs: nnx.Rngs,
    ):
        self.stages = tuple(stages)
        self.out_shape = (*image_shape[:2], out_channels)
        self.scale = scale

        def dense(n_in: int, st: Stage, n_out: int):
            return lambda r: MLP([n_in, *[st.width] * depth, n_out], activation, False, rngs=r)

        def stack(st: Stage) -> Stack | None:
            if st.groups == 1:
                return None
            return Stack(dense(st.dim, st, 2 * st.dim), st.groups - 1, rngs=rngs)

        inputs = [math.prod(image_shape)] + [st.dim for st in stages[:-1]]
        self.enc_first = nnx.List(
            [dense(n, st, 2 * st.dim)(rngs) for n, st in zip(inputs, stages, strict=True)]
        )
        self.enc_rest = nnx.List([stack(st) for st in stages])
        self.dec_rest = nnx.List([stack(st) for st in stages])
        self.dec_down = nnx.List(
            [None]
            + [dense(b.dim, b, 2 * a.dim)(rngs) for a, b in zip(stages, stages[1:], strict=False)]
        )
        self.out = dense(stages[0].dim, stages[0], math.prod(self.out_shape))(rngs)

    def rest(self, stacks: nnx.List, s: int) -> Stack:
        """Stage s's stack of the groups after its first (it has more than one group)."""
        stack = stacks[s]
        assert isinstance(stack, Stack)
        return stack

    def infer(self, x: jax.Array, eps: jax.Array) -> list[Posterior]:
        """The posterior pass: per stage (q_mean, q_logvar, z, eps), each [groups, N, dim]."""
        n = eps.shape[0]
        reps = n // x.shape[0]
        h = jnp.tile(x.reshape(x.shape[0], -1), (reps, 1))
        out: list[Posterior] = []
        for s, (st, sl) in enumerate(zip(self.stages, stage_slices(self.stages), strict=True)):
            e = to_groups(eps[:, sl], st)
            mean, logvar = split_posterior(self.enc_first[s](h), st.dim, self.scale)
            z = mean + jnp.exp(0.5 * logvar) * e[0]
            means, logvars, zs = mean[None], logvar[None], z[None]
            if st.groups > 1:
                rest = self.rest(self.enc_rest, s).scan(
                    sampling_step(st.dim, self.scale), z, e[1:]
                )[1]
                means = jnp.concatenate([means, rest[0]])
                logvars = jnp.concatenate([logvars, rest[1]])
                zs = jnp.concatenate([zs, rest[2]])
            out.append((means, logvars, zs, e))
            h = zs[-1]
        return out

    def priors(self, zs: list[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
        """p(z_l | z_{l+1}) of every group below the top from the sampled z's, in parallel:
        per stage (p_mean, p_logvar) [groups, N, dim]; the top group's is N(0, I)."""
        out: list[tuple[jax.Array, jax.Array]] = []
        for s, st in enumerate(self.stages):
            parts = []
            if st.groups > 1:
                parts.append(
                    self.rest(self.dec_rest, s).scan(gaussian_step(st.dim), (), zs[s][1:])[1]
                )
            if s + 1 < len(self.stages):
                top = split_gaussian(self.dec_down[s + 1](zs[s + 1][0]), st.dim)
            else:
                zero = jnp.zeros_like(zs[s][-1])
                top = (zero, zero)
            parts.append((top[0][None], top[1][None]))
            out.append(
                (
                    jnp.concatenate([p[0] for p in parts]),
                    jnp.concatenate([p[1] for p in parts]),
                )
            )
        return out

    def __call__(
        self, x: jax.Array, eps: jax.Array, use_posterior: jax.Array, temperature: jax.Array
    ) -> Pass:
        """x [B, ...]; eps [N, U] with N a multiple of B (see TopDownNet); all groups from the
        posterior (use_posterior, temperature: see generate)."""
        posts = self.infer(x, eps)
        log_q = [log_normal_at_own_sample(p[3], p[1]) for p in posts]
        return self.terms(posts, log_q, posts[0][2][0])

    def terms(self, posts: list[Posterior], log_q: list[jax.Array], z_1: jax.Array) -> Pass:
        """The Pass of posterior samples posts (as from infer) with their log q per unit."""
        priors = self.priors([p[2] for p in posts])
        kls: list[jax.Array] = []
        means: list[jax.Array] = []
        n = z_1.shape[0]
        log_ratio = jnp.zeros((n,), jnp.float32)
        for s, ((q_mean, q_logvar, z, _), lq, (p_mean, p_logvar)) in enumerate(
            zip(posts, log_q, priors, strict=True)
        ):
            log_p = log_normal(z, p_mean, p_logvar)
            kl = lq - log_p
            if s == len(self.stages) - 1:  # the top group: analytic KL to N(0, I)
                kl = kl.at[-1].set(kl_normal(q_mean[-1], q_logvar[-1], p_mean[-1], p_logvar[-1]))
            kls.append(to_flat(kl))
            means.append(to_flat(q_mean))
            log_ratio = log_ratio + jnp.sum(lq - log_p, axis=(0, 2))
        outputs = self.out(z_1).reshape(n, *self.out_shape)
        return Pass(
            outputs.astype(jnp.float32),
            jnp.concatenate(kls, axis=1),
            log_ratio,
            jnp.concatenate(means, axis=1),
        )

    def terms_at(self, x: jax.Array, z: jax.Array) -> Pass:
        """The Pass at given samples z [N, U] (N a multiple of x's rows), with log q(z|x)
        computed from encoder parameters under stop_gradient: the encoder is reached only
        through z, as DReG needs (Tucker et al. 2019)."""
        reps = z.shape[0] // x.shape[0]
        h = jnp.tile(x.reshape(x.shape[0], -1), (reps, 1))
        posts: list[Posterior] = []
        log_q: list[jax.Array] = []
        for s, (st, sl) in enumerate(zip(self.stages, stage_slices(self.stages), strict=True)):
            zs = to_groups(z[:, sl], st)
            mean, logvar = split_posterior(stopped(self.enc_first[s])(h), st.dim, self.scale)
            means, logvars = mean[None], logvar[None]
            if st.groups > 1:
                rest = stopped(self.rest(self.enc_rest, s)).scan(
                    gaussian_step(st.dim, self.scale), (), zs[:-1]
                )[1]
                means = jnp.concatenate([means, rest[0]])
                logvars = jnp.concatenate([logvars, rest[1]])
            posts.append((means, logvars, zs, jnp.zeros_like(zs)))
            log_q.append(log_normal(zs, means, logvars))
            h = zs[-1]
        return self.terms(posts, log_q, posts[0][2][0])

    def conditional(self, s: int, i: int, z_above: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(p_mean, p_logvar) of group i of stage s given the group above it."""
        st = self.stages[s]
        stack = self.dec_rest[s]
        block = stack.block(i) if stack is not None and i < st.groups - 1 else self.dec_down[s + 1]
        return split_gaussian(block(z_above), st.dim)

    def generate(
        self, eps: jax.Array, temperature: jax.Array, x: jax.Array | None, keep: int
    ) -> jax.Array:
        """Likelihood parameters of N = eps.shape[0] draws: the top `keep` groups from the
        posterior of x (none if keep is 0), then z_{l-1} = p_mean + T sigma eps_{l-1} down to z_1
        (z_L = T eps_L if keep is 0). Walks the groups in Python: for evaluation, not training."""
        posts = self.infer(x, eps) if keep and x is not None else None
        layout = [(s, i) for s, st in enumerate(self.stages) for i in range(st.groups)]
        slices = stage_slices(self.stages)
        z = None
        for g in reversed(range(len(layout))):
            s, i = layout[g]
            if posts is not None and g >= len(layout) - keep:
                z = posts[s][2][i]
                continue
            e = to_groups(eps[:, slices[s]], self.stages[s])[i]
            if z is None:
                z = temperature * e
            else:
                mean, logvar = self.conditional(s, i, z)
                z = mean + temperature * jnp.exp(0.5 * logvar) * e
        assert z is not None
        return self.out(z).reshape(eps.shape[0], *self.out_shape).astype(jnp.float32)


class HierarchicalVAE(nnx.Module):
    """A hierarchical net (TopDownNet or BottomUpNet) and the likelihood p(x|z_1).

    The train step and the estimators call elbo_terms and importance_terms (the plain VAE's
    encode/decode have no meaning for several groups); sampling noise comes from the caller
    as a flat eps over all units (src/models/hier_plan.py numbers them)."""

    def __init__(self, net: TopDownNet | BottomUpNet, likelihood: Likelihood):
        self.net = net
        self.likelihood = likelihood
        self.group_sizes = group_sizes(net.stages)
        self.latent_units = sum(self.group_sizes)

    def _pass(self, x: jax.Array, eps: jax.Array) -> Pass:
        groups = len(self.group_sizes)
        return self.net(x, eps, jnp.ones((groups,), bool), jnp.float32(1.0))

    def elbo_terms(
        self, x: jax.Array, eps: jax.Array, dropout_key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One posterior sample per example: recon = -log p(x|z_1) [B], the per-unit KL terms
        [B, U] and the posterior means [B, U]; eps [B, U]. No dropout (dropout_key unused)."""
        out = self._pass(x, eps)
        return self.likelihood(out.outputs, x), out.kl, out.mean

    def importance_terms(
        self, x: jax.Array, eps: jax.Array, dropout_key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """log w_s = log p(x|z_1) + log p(z) - log q(z|x) for eps [S, B, U]: ([S, B] log w,
        [S, B] log p(x|z_1), [B, U] the KL terms of sample 0)."""
        samples, batch = eps.shape[:2]
        out = self._pass(x, eps.reshape(samples * batch, -1))
        x_rep = jnp.broadcast_to(x, (samples, *x.shape)).reshape(samples * batch, *x.shape[1:])
        log_px_z = -self.likelihood(out.outputs, x_rep).reshape(samples, batch)
        log_w = log_px_z - out.log_ratio.reshape(samples, batch)
        return log_w, log_px_z, out.kl[:batch]

    def dreg_sample(self, x: jax.Array, eps: jax.Array) -> jax.Array:
        """bottom_up only: z [S, B, U] drawn from q(z|x) with eps [S, B, U] (DReG's path from the
        encoder parameters to z)."""
        assert isinstance(self.net, BottomUpNet)
        samples, batch = eps.shape[:2]
        posts = self.net.infer(x, eps.reshape(samples * batch, -1))
        return jnp.concatenate([to_flat(p[2]) for p in posts], axis=1).reshape(eps.shape)

    def dreg_log_weights(
        self, x: jax.Array, z: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """bottom_up only: log w [S, B] at z [S, B, U] with log q(z|x) at stopped encoder
        parameters, and (log p(x|z_1) [S, B], the KL terms of sample 0 [B, U])."""
        assert isinstance(self.net, BottomUpNet)
        samples, batch = z.shape[:2]
        out = self.net.terms_at(x, z.reshape(samples * batch, -1))
        x_rep = jnp.broadcast_to(x, (samples, *x.shape)).reshape(samples * batch, *x.shape[1:])
        log_px_z = -self.likelihood(out.outputs, x_rep).reshape(samples, batch)
        return log_px_z - out.log_ratio.reshape(samples, batch), (log_px_z, out.kl[:batch])

    def sample(self, eps: jax.Array, temperature: jax.Array) -> jax.Array:
        """Likelihood parameters of eps.shape[0] prior draws at temperature; eps [N, U]."""
        return self.net.generate(eps, temperature, None, 0)

    def reconstruct(self, x: jax.Array, eps: jax.Array, keep: int) -> jax.Array:
        """Likelihood parameters with the top `keep` groups drawn from q(.|x) and the rest from
        the prior given them; keep = L and eps = 0 gives the posterior-mean reconstruction."""
        return self.net.generate(eps, jnp.float32(1.0), x, keep)

    def nll(self, outputs: jax.Array, x: jax.Array) -> jax.Array:
        """-log p(x|z_1) per example in nats: [batch]."""
        return self.likelihood(outputs, x)

    def mean_image(self, outputs: jax.Array) -> jax.Array:
        """E[x | z_1] from the likelihood parameters: [batch, H, W, C]."""
        return self.likelihood.mean(outputs)


def build_hierarchical(cfg: Any, image_shape: Sequence[int], rngs: nnx.Rngs) -> HierarchicalVAE:
    """cfg is the `model` section; its shape errors are ConfigErrors raised before tracing."""
    h = cfg.hierarchical
    stages = plan_stages(h, image_shape)
    likelihood = build_likelihood(cfg, image_shape)
    scale = (cfg.scale_param, cfg.scale_floor)  # the posteriors' scale, as the plain VAE's
    out_channels = likelihood.decoder_channels(int(image_shape[2]))
    if h.structure == "bottom_up":
        if h.body != "mlp":
            raise ConfigError(
                "model.hierarchical.structure=bottom_up is built with body mlp only (Burda et "
                "al.'s dense conditionals); use structure top_down for body conv"
            )
        net: TopDownNet | BottomUpNet = BottomUpNet(
            stages, image_shape, out_channels, h.depth, cfg.activation, scale, rngs=rngs
        )
    else:
        c = h.conv
        net = TopDownNet(
            stages,
            image_shape,
            out_channels,
            h.depth,
            c.bottleneck,
            c.kernel_size,
            cfg.activation,
            scale,
            rngs=rngs,
        )
    for _, module in nnx.iter_modules(net):
        if isinstance(module, Stack):
            module.unroll = bool(h.unroll)
    return HierarchicalVAE(net, likelihood)
