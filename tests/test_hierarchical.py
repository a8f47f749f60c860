"""The hierarchical family: shapes, bounds, agreement with the plain VAE, scanned stacks,
backends, resume, evaluation and config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from src.models.registry import build_model, latent_groups
from src.training.device.parallel import make_mesh
from src.training.losses import iwae_bound, vae_terms
from src.training.optim import build_optimizer
from src.training.setup import build_train_step
from src.training.state import init_state, split_model
from src.training.step import iwae_grads
from src.utils.config import load_config
from src.utils.errors import ConfigError
from tests.helpers import (
    BASELINE,
    REPO,
    TINY,
    at_batch,
    read_state,
    run_script,
    train,
    without_timings,
)

SHAPE = (8, 8, 1)
HIER = [
    "model.type=hierarchical",
    "model.hierarchical.groups=[2,1]",
    "model.hierarchical.group_dims=[3,2]",
    "model.hierarchical.widths=[16,8]",
    "model.hierarchical.depth=1",
    "model.activation=tanh",
]
BODIES = {
    ("bottom_up", "mlp"): [],
    ("top_down", "mlp"): [],
    (
        "top_down",
        "conv",
    ): ["model.hierarchical.conv.downsample=[1,2]", "model.hierarchical.conv.bottleneck=0.5"],
}


def hier_cfg(structure: str, body: str, *extra: str):
    overrides = [
        *HIER,
        f"model.hierarchical.structure={structure}",
        f"model.hierarchical.body={body}",
        *BODIES[(structure, body)],
        *extra,
    ]
    return load_config(BASELINE, overrides=overrides)


def binary_images(n: int, seed: int = 1) -> jax.Array:
    return jax.random.bernoulli(jax.random.key(seed), 0.4, (n, *SHAPE)).astype(jnp.float32)


@pytest.mark.parametrize(
    "structure, body, likelihood",
    [(*sb, "bernoulli") for sb in BODIES] + [("top_down", "mlp", "categorical")],
)
def test_shapes_of_every_structure_and_body(structure, body, likelihood):
    """Computed abstractly (no parameter is allocated, nothing runs)."""
    cfg = hier_cfg(structure, body, f"model.likelihood={likelihood}")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg.model, SHAPE, nnx.Rngs(0))))
    groups = latent_groups(cfg.model, SHAPE)
    if body == "conv":  # stage 0 at 8x8 (3 channels), stage 1 pooled to 4x4 (2 channels)
        assert groups == (8 * 8 * 3, 8 * 8 * 3, 4 * 4 * 2)
    else:
        assert groups == (3, 3, 2)
    units = sum(groups or ())
    x = jax.ShapeDtypeStruct((5, *SHAPE), jnp.float32)

    def shapes(method: str, *args: Any) -> Any:
        return jax.eval_shape(
            lambda st, *a: getattr(nnx.merge(graphdef, st), method)(*a), state, *args
        )

    recon, kl, mean = shapes("elbo_terms", x, jnp.zeros((5, units)))
    assert recon.shape == (5,) and kl.shape == mean.shape == (5, units)
    log_w, log_px, kl0 = shapes("importance_terms", x, jnp.zeros((3, 5, units)))
    assert log_w.shape == log_px.shape == (3, 5) and kl0.shape == (5, units)
    levels = 17 if likelihood == "categorical" else 1
    assert shapes("sample", jnp.zeros((4, units)), 0.5).shape == (4, *SHAPE[:2], levels)
    for keep in (0, 1, len(groups or ())):
        out = jax.eval_shape(
            lambda st, e, k=keep: nnx.merge(graphdef, st).reconstruct(jnp.zeros(x.shape), e, k),
            state,
            jnp.zeros((5, units)),
        )
        assert out.shape == (5, *SHAPE[:2], levels)


@pytest.mark.parametrize("structure, body", list(BODIES))
def test_kl_terms_sum_to_log_ratio_in_expectation_and_iwae_is_above_elbo(structure, body):
    """sum_units kl is an estimate of E_q[log q - log p]; L_k (k = 10) lies above the one-sample
    ELBO L_1 by more than 4 standard errors (Burda et al. 2016, Theorem 1)."""
    cfg = hier_cfg(structure, body)
    model = build_model(cfg.model, SHAPE, nnx.Rngs(0))
    units = sum(latent_groups(cfg.model, SHAPE) or ())
    x = binary_images(4)

    @jax.jit
    def bounds(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        eps = jax.random.normal(key, (10, 4, units))
        log_w, log_px, kl0 = model.importance_terms(x, eps)
        elbo_analytic = log_px[0] - kl0.sum(-1)
        return log_w[0], iwae_bound(log_w), elbo_analytic

    draws = [bounds(jax.random.key(i)) for i in range(200)]
    l1, l10, analytic = (np.stack([np.asarray(d[i]) for d in draws]).mean(1) for i in range(3))
    diff = l10 - l1
    assert diff.mean() > 4 * diff.std() / np.sqrt(len(diff))
    # The analytic-KL ELBO and the sampled log-weight estimate the same bound.
    gap = analytic - l1
    assert abs(gap.mean()) < 4 * gap.std() / np.sqrt(len(gap)) + 1e-4


def test_elbo_terms_match_the_first_iwae_sample():
    cfg = hier_cfg("top_down", "mlp")
    graphdef, params = split_model(build_model(cfg.model, SHAPE, nnx.Rngs(0)))
    units = sum(latent_groups(cfg.model, SHAPE) or ())
    x, eps = binary_images(3), jax.random.normal(jax.random.key(5), (2, 3, units))

    @jax.jit
    def both(params: Any) -> tuple:
        model = nnx.merge(graphdef, params)
        return model.elbo_terms(x, eps[0]), model.importance_terms(x, eps)

    (recon, kl, _), (_, log_px, kl0) = both(params)
    np.testing.assert_allclose(-log_px[0], recon, rtol=1e-5)
    np.testing.assert_allclose(kl0, kl, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale_param", ["exp", "softplus"])
def test_one_bottom_up_group_is_the_plain_mlp_vae(scale_param):
    """groups [1], widths [W], depth d with the plain VAE's weights: the same recon, KL and
    importance weights, so the family adds structure, not a different one-layer model (with
    either model.scale_param: the posterior's scale is parameterized as the plain VAE's)."""
    scale = [f"model.scale_param={scale_param}", "model.scale_floor=0.01"]
    hier = hier_cfg(
        "bottom_up",
        "mlp",
        "model.hierarchical.groups=[1]",
        "model.hierarchical.group_dims=[3]",
        "model.hierarchical.widths=[16]",
        "model.hierarchical.depth=2",
        *scale,
    )
    plain = load_config(
        BASELINE,
        overrides=[
            "model.hidden_dims=[16,16]",
            "model.latent_dim=3",
            "model.activation=tanh",
            *scale,
        ],
    )
    h_graph, h_params = split_model(build_model(hier.model, SHAPE, nnx.Rngs(0)))
    p_graph, p_params = split_model(build_model(plain.model, SHAPE, nnx.Rngs(1)))
    h_params["net"]["enc_first"][0] = p_params["encoder"]["net"]
    h_params["net"]["out"] = p_params["decoder"]["net"]
    x, eps = binary_images(4), jax.random.normal(jax.random.key(2), (4, 3))
    a, b = jax.jit(
        lambda hp, pp: (
            vae_terms(nnx.merge(h_graph, hp), x, eps, None),
            vae_terms(nnx.merge(p_graph, pp), x, eps, None),
        )
    )(h_params, p_params)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)


def train_steps(cfg, steps: int = 3) -> tuple[list[dict], dict]:
    graphdef, params = split_model(build_model(cfg.model, SHAPE, nnx.Rngs(0)))
    tx, schedule = build_optimizer(cfg.optimizer, cfg.training.lr, 10)
    mesh = make_mesh(jax.devices()[:1])
    step = build_train_step(cfg, graphdef, tx, schedule, mesh, image_shape=SHAPE)
    state = init_state(params, tx)
    x = jax.random.uniform(jax.random.key(0), (8, *SHAPE))
    metrics = []
    for i in range(steps):
        state, m = step(state, x, jax.random.key(i), True)
        metrics.append(jax.device_get(m))
    return metrics, jax.device_get(state.params)


@pytest.mark.parametrize("structure, body", list(BODIES))
def test_dmol_likelihood_sizes_the_decoder_and_trains(structure, body):
    """The decoder's width comes from the likelihood's decoder_channels (DMOL's is not
    C * params_per_pixel: 3 numbers per component for one channel, here 4 * 3), and a few steps
    train to finite numbers."""
    dmol = ["model.likelihood=dmol", "model.dmol.levels=17", "model.dmol.mixtures=4"]
    cfg = hier_cfg(structure, body, *dmol)
    model = nnx.eval_shape(lambda: build_model(cfg.model, SHAPE, nnx.Rngs(0)))
    assert model.net.out_shape == (*SHAPE[:2], 4 * 3)
    metrics, params = train_steps(cfg, steps=3)
    assert all(np.isfinite(m["loss"]) for m in metrics)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("structure, body", list(BODIES))
def test_softplus_scale_floors_every_posterior_std_and_trains(structure, body):
    """model.scale_param=softplus reaches the posterior heads: with a floor of 2, every std of
    the top group is above 2, and as its prior is N(0, I), KL = -log s + (s^2 + m^2) / 2 - 1/2
    >= 2 - log 2 - 1/2 per unit; under exp (std near 1 at initialisation) it is not. A few
    steps train to finite numbers."""

    def top_kl(scale_param: str) -> float:
        cfg = hier_cfg(structure, body, f"model.scale_param={scale_param}", "model.scale_floor=2.0")
        model = build_model(cfg.model, SHAPE, nnx.Rngs(0))
        groups = latent_groups(cfg.model, SHAPE) or ()
        _, kl, _ = model.elbo_terms(binary_images(4), jnp.zeros((4, sum(groups))))
        return float(kl[:, -groups[-1] :].min())

    bound = 2.0 - np.log(2.0) - 0.5
    assert top_kl("softplus") >= bound - 1e-5
    assert top_kl("exp") < bound
    cfg = hier_cfg(structure, body, "model.scale_param=softplus", "model.scale_floor=2.0")
    metrics, _ = train_steps(cfg, steps=3)
    assert all(np.isfinite(m["loss"]) for m in metrics)


def test_iwae_with_one_sample_is_the_elbo_bit_for_bit():
    elbo, elbo_params = train_steps(hier_cfg("top_down", "mlp"), steps=2)
    iwae, iwae_params = train_steps(
        hier_cfg("top_down", "mlp", "training.objective=iwae", "training.iwae_samples=1"), 2
    )
    for a, b in zip(elbo, iwae, strict=True):
        assert a.keys() == b.keys() and "kl_per_group" in a and "kl_per_dim" not in a
        np.testing.assert_allclose(a["kl_per_group"].sum(), a["kl"], rtol=1e-5)
        assert a["elbo"] == -(a["recon"] + a["kl"]) and a["loss"] == a["recon"] + a["kl"]
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    for a, b in zip(jax.tree.leaves(elbo_params), jax.tree.leaves(iwae_params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_kl_warmup_and_free_bits_act_on_the_hierarchical_kl():
    """Free bits act per unit (here all 8 units sit below a 100-nat floor, so the KL term is
    8 x 100) and the warm-up weight multiplies the floored sum: 0 at step 0, 0.1 at step 1."""
    cfg = hier_cfg(
        "top_down",
        "mlp",
        "training.kl.warmup=linear",
        "training.kl.warmup_steps=10",
        "training.kl.free_bits=100.0",
    )
    first, second = train_steps(cfg, steps=2)[0]
    assert first["kl_weight"] == 0 and first["loss"] == first["recon"]
    np.testing.assert_allclose(second["loss"], second["recon"] + 0.1 * 8 * 100.0, rtol=1e-6)


def test_iwae_trains_and_reports_its_bound():
    cfg = hier_cfg("top_down", "mlp", "training.objective=iwae", "training.iwae_samples=4")
    metrics, _ = train_steps(cfg, steps=12)
    assert all(m["loss"] == -m["iwae_bound"] for m in metrics)
    assert np.mean([m["loss"] for m in metrics[-3:]]) < np.mean([m["loss"] for m in metrics[:3]])


def test_dreg_for_bottom_up_keeps_the_decoder_gradient_and_the_expectation():
    """Decoder gradients equal the standard ones draw by draw; the encoder's agree in the mean
    (within 5 standard errors per coordinate) with a smaller total variance."""
    cfg = hier_cfg("bottom_up", "mlp", "model.hierarchical.groups=[1,1]")
    graphdef, params = split_model(build_model(cfg.model, SHAPE, nnx.Rngs(0)))
    x, units, k, draws = binary_images(4), 3 + 2, 8, 600

    def grads(gradient: str):
        @jax.jit
        def one(key: jax.Array) -> dict:
            eps = jax.random.normal(key, (4, k, units))
            return iwae_grads(graphdef, params, x, eps, jax.random.key(0), gradient)[0]

        rows = [jax.device_get(one(jax.random.key(i))) for i in range(draws)]

        def flat(names: tuple[str, ...]) -> np.ndarray:
            return np.stack(
                [
                    np.concatenate(
                        [np.ravel(v) for n in names for v in jax.tree.leaves(r["net"][n])]
                    )
                    for r in rows
                ]
            )

        return flat(("enc_first",)), flat(("dec_down", "out"))

    enc_std, dec_std = grads("standard")
    enc_dreg, dec_dreg = grads("dreg")
    np.testing.assert_allclose(dec_dreg, dec_std, rtol=1e-4, atol=2e-5)
    diff = enc_dreg - enc_std
    se = diff.std(axis=0, ddof=1) / np.sqrt(draws)
    assert np.all(np.abs(diff.mean(axis=0)) <= 5 * se + 1e-7)
    assert np.max(np.abs(diff)) > 1e-3
    assert enc_dreg.var(axis=0).sum() < enc_std.var(axis=0).sum()


@pytest.mark.parametrize("body", ["mlp", "conv"])
def test_a_deeper_stack_traces_to_the_same_program_size(body):
    """Identical blocks run as one lax.scan: 2 and 8 groups per stage give jaxprs of the same
    number of equations (compile time does not grow with depth)."""

    def equations(groups: int) -> int:
        cfg = hier_cfg("top_down", body, f"model.hierarchical.groups=[{groups},1]")
        model = build_model(cfg.model, SHAPE, nnx.Rngs(0))
        units = sum(latent_groups(cfg.model, SHAPE) or ())
        x = jnp.zeros((2, *SHAPE))
        jaxpr = jax.make_jaxpr(lambda e: model.elbo_terms(x, e))(jnp.zeros((2, units)))
        return len(jaxpr.jaxpr.eqns)

    assert equations(2) == equations(8)


@pytest.mark.parametrize("body", ["mlp", "conv"])
def test_unroll_gives_the_scanned_numbers_in_a_program_that_grows_with_depth(body):
    """model.hierarchical.unroll: the same parameters give the scanned model's ELBO terms (up to
    float rounding), from a program (the lowered StableHLO) with one copy of the block per
    group."""

    def terms_and_equations(unroll: bool, groups: int) -> tuple[Any, int]:
        cfg = hier_cfg(
            "top_down",
            body,
            f"model.hierarchical.groups=[{groups},1]",
            f"model.hierarchical.unroll={str(unroll).lower()}",
        )
        model = build_model(cfg.model, SHAPE, nnx.Rngs(0))
        units = sum(latent_groups(cfg.model, SHAPE) or ())
        x = binary_images(2)
        eps = jax.random.normal(jax.random.key(1), (2, units))
        program = jax.jit(lambda e: model.elbo_terms(x, e)).lower(eps).as_text()
        return model.elbo_terms(x, eps), len(program.splitlines())

    scanned, scanned_eqns = terms_and_equations(False, 4)
    unrolled, unrolled_eqns = terms_and_equations(True, 4)
    for a, b in zip(scanned, unrolled, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert unrolled_eqns > scanned_eqns
    assert terms_and_equations(True, 8)[1] > unrolled_eqns


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.hierarchical.group_dims=[3]"],
            "model.hierarchical: groups, group_dims, widths need one entry per stage",
        ),
        (
            ["model.hierarchical.structure=bottom_up", "model.hierarchical.body=conv"],
            "structure=bottom_up is built with body mlp only",
        ),
        (
            ["training.objective=iwae", "training.iwae_samples=2", "training.iwae_gradient=dreg"],
            "dreg does not hold for model.hierarchical.structure=top_down",
        ),
        (["eval.keep_top_groups=[4]"], "eval.keep_top_groups must be in [0, 3]"),
        (["eval.sample_temperatures=[0.0]"], "eval.sample_temperatures must be positive"),
        (["model.hierarchical.widths=[16,0]"], "model.hierarchical.widths must be positive"),
        (["model.hierarchical.structure=sideways"], "model.hierarchical.structure: 'sideways'"),
    ],
)
def test_bad_configs_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(BASELINE, overrides=[*HIER, *overrides])
    assert message in str(info.value)


def test_a_pooled_bottom_stage_maps_back_to_the_image():
    cfg = hier_cfg("top_down", "conv", "model.hierarchical.conv.downsample=[2,2]")
    assert latent_groups(cfg.model, SHAPE) == (4 * 4 * 3, 4 * 4 * 3, 2 * 2 * 2)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg.model, SHAPE, nnx.Rngs(0))))
    recon = jax.eval_shape(
        lambda st, x, e: nnx.merge(graphdef, st).elbo_terms(x, e)[0],
        state,
        jnp.zeros((2, *SHAPE)),
        jnp.zeros((2, 104)),
    )
    assert recon.shape == (2,)


def test_pooling_that_does_not_divide_is_a_config_error_at_build():
    cfg = hier_cfg("top_down", "conv", "model.hierarchical.conv.downsample=[1,3]")
    with pytest.raises(ConfigError) as info:
        build_model(cfg.model, SHAPE, nnx.Rngs(0))
    assert "model.hierarchical.conv.downsample[1]=3 does not divide the 8x8 maps" in str(info.value)


def test_bad_resolution_exits_2_with_one_line(tmp_path):
    result = run_script(
        "train.py",
        f"--config={BASELINE}",
        "--model=hierarchical",
        f"--workdir={tmp_path}",
        "--config.model.hierarchical.body=conv",
        "--config.model.hierarchical.conv.downsample=[3,1]",
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "downsample[0]=3 does not divide the 8x8 maps" in result.stderr


HIER_TINY = [*TINY, *HIER, "training.epochs=2"]


@pytest.fixture(scope="module")
def hier_run(tmp_path_factory) -> Path:
    """An uninterrupted tiny top-down run (2 epochs of 44 steps)."""
    workdir = tmp_path_factory.mktemp("hier")
    train(workdir, "ref", HIER_TINY)
    return workdir / "checkpoints" / "ref"


def test_records_hold_per_group_metrics(hier_run):
    history = json.loads((hier_run / "metrics.json").read_text())["history"]
    train_records = [r for r in history if r["split"] == "train"]
    val_records = [r for r in history if r["split"] == "val"]
    assert train_records and val_records
    for r in train_records:
        assert len(r["kl_per_group"]) == 3 and "kl_per_dim" not in r
    for r in val_records:
        assert len(r["kl_per_group"]) == len(r["active_units_per_group"]) == 3
        assert len(r["kl_mass_units_per_group"]) == 3
        assert sum(r["active_units_per_group"]) == r["active_units"] <= 8
        assert abs(sum(r["kl_per_group"]) - r["kl"]) < 1e-6 * max(1.0, r["kl"])


def test_sigterm_then_resume_is_bit_exact(tmp_path, hier_run, monkeypatch):
    """SIGTERM during step 34 (inside a logging interval, off the checkpoint steps): the run
    saves there and stops; resumed, it ends with the uninterrupted run's history and state."""
    from argparse import Namespace

    from src.training.cli import resume_config
    from src.training.loop import train_and_evaluate
    from src.training.run.rundir import prepare, run_paths

    at_batch(monkeypatch, 33, lambda: os.kill(os.getpid(), signal.SIGTERM))
    record = train(tmp_path, "x", HIER_TINY)[0]
    assert record["status"] == "interrupted" and record["stopped_at_step"] == 34
    monkeypatch.undo()
    paths = run_paths(tmp_path, "x")
    prepare(paths, resume=True, overwrite=False)
    cfg = resume_config(Namespace(config=None, model=None, data=None), [], paths)
    record = train_and_evaluate(cfg, paths, resume=True)
    want = json.loads((hier_run / "metrics.json").read_text())
    assert without_timings(record["history"]) == without_timings(want["history"])
    (_, a), (_, b) = read_state(paths.last), read_state(hier_run / "model_last")
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_evaluate_reports_iwae_nll_and_per_group_metrics(hier_run):
    from src.evaluation.evaluate import evaluate_run

    record, written = evaluate_run(
        hier_run, "best", "val", ["eval.iwae_samples=20", "eval.keep_top_groups=[0,1,3]"]
    )
    val = json.loads((hier_run / "metrics.json").read_text())["best"]
    assert record["elbo"] == pytest.approx(val["value"], abs=1e-9)  # the logged validation
    assert record["iwae_nll"] <= -record["elbo"] + 1.0  # L_20 is not below L_1 by much noise
    assert record["bits_per_dim"] == pytest.approx(record["iwae_nll"] / (64 * np.log(2)))
    assert len(record["kl_per_group"]) == len(record["active_units_per_group"]) == 3
    assert record["group_sizes"] == [3, 3, 2]
    names = {p.name for p in written}
    for name in ("kl_per_group", "prior_samples", "top_groups", "reconstructions"):
        assert f"best_val_{name}.png" in names


@pytest.mark.slow
def test_backends_and_device_counts_agree(tmp_path):
    """jit, shard_map and pmap on 4 simulated devices, steps_per_call 4, and 1 device: the same
    losses and final parameters up to the cross-device float reassociation."""
    runs = {
        "jit4": [],
        "shard4": ["parallel.backend=shard_map"],
        "pmap4": ["parallel.backend=pmap"],
        "jit4_k4": ["training.steps_per_call=4"],
        "one": ["parallel.num_devices=1"],
    }
    small = [*HIER, "training.epochs=1", "training.batch_size=64", "logging.every_steps=1"]
    small += ["logging.console=false", "logging.tensorboard=false", "eval.every_steps=11"]
    argv = [
        [f"--config={BASELINE}", f"--workdir={tmp_path}", f"--run_id={name}"]
        + [f"--config.{o}" for o in [*small, *extra]]
        for name, extra in runs.items()
    ]
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tests.run_many", json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    def losses(name: str) -> np.ndarray:
        history = json.loads((tmp_path / "checkpoints" / name / "metrics.json").read_text())
        return np.array([r["loss"] for r in history["history"] if r["split"] == "train"])

    _, reference = read_state(tmp_path / "checkpoints" / "jit4" / "model_last")
    for name in runs:
        np.testing.assert_allclose(losses(name), losses("jit4"), rtol=1e-5)
        _, state = read_state(tmp_path / "checkpoints" / name / "model_last")
        for u, v in zip(jax.tree.leaves(state), jax.tree.leaves(reference), strict=True):
            u = np.asarray(u)
            np.testing.assert_allclose(u.reshape(np.asarray(v).shape), v, rtol=1e-4, atol=1e-5)


def test_dry_run_counts_the_flops_of_every_scanned_block():
    """XLA counts a loop body once; the dry run counts the unrolled stack, so FLOPs grow with
    linearly with the number of groups of a stage."""
    from src.training.device.parallel import make_mesh
    from src.training.dry_run import step_analysis
    from src.training.setup import build_state

    def flops(groups: int) -> float:
        cfg = hier_cfg("top_down", "mlp", f"model.hierarchical.groups=[{groups},1]")
        graphdef, tx, schedule, state = build_state(cfg, SHAPE, 10, None)
        mesh = make_mesh(jax.devices()[:1])
        example = np.zeros(SHAPE, np.float32)
        return step_analysis(cfg, graphdef, state, tx, schedule, mesh, example)[0]["flops"]

    f2, f4, f8 = flops(2), flops(4), flops(8)
    assert f4 - f2 > 0.05 * f2  # counted once, the loop body would add nothing
    assert f8 - f4 == pytest.approx(2 * (f4 - f2), rel=0.2)  # about linear in the depth
