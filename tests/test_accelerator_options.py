"""Options for accelerators, checked on CPU: model.compute_dtype bfloat16 (matmuls in bfloat16,
parameters, optimizer state and loss in float32, numbers close to float32) and
compile.deterministic_gpu (the XLA flags a run sets, and keeps the user's)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from src.models.registry import build_model
from src.training.device.parallel import make_mesh
from src.training.losses import vae_terms
from src.training.optim import build_optimizer
from src.training.setup import build_train_step
from src.training.state import init_state, split_model
from src.utils.config import load_config
from src.utils.reproducibility import DETERMINISTIC_XLA_FLAGS, configure_determinism
from tests.helpers import BASELINE, TINY, run_script

FAMILIES = {
    "mlp": ["model.hidden_dims=[32]"],
    "conv": ["model.type=conv", "model.conv.channels=[8, 8]"],
    "transformer": ["model.type=transformer", "model.hidden_dim=16", "model.transformer.depth=1"],
}


def models(family: str) -> tuple:
    overrides = [*FAMILIES[family], "model.latent_dim=3"]
    built = {}
    for dtype in ("float32", "bfloat16"):
        cfg = load_config(BASELINE, overrides=[*overrides, f"model.compute_dtype={dtype}"])
        built[dtype] = build_model(cfg.model, (8, 8, 1), nnx.Rngs(0))
    return cfg, built["float32"], built["bfloat16"]


def digits(n: int) -> jax.Array:
    return jax.random.randint(jax.random.key(3), (n, 8, 8, 1), 0, 17).astype(jnp.float32) / 16


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bfloat16_matmuls_with_float32_params_and_outputs(family):
    _, f32, bf16 = models(family)
    x, eps = digits(4), jax.random.normal(jax.random.key(1), (4, 3))
    _, p32 = split_model(f32)
    _, p16 = split_model(bf16)
    for a, b in zip(jax.tree.leaves(p32), jax.tree.leaves(p16), strict=True):
        assert b.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)  # same init: the dtype changes only the compute
    jaxpr = str(jax.make_jaxpr(lambda m: vae_terms(m, x, eps, None))(bf16))
    assert "bf16" in jaxpr and "dot_general" in jaxpr
    assert "bf16" not in str(jax.make_jaxpr(lambda m: vae_terms(m, x, eps, None))(f32))
    t32, t16 = vae_terms(f32, x, eps, None), vae_terms(bf16, x, eps, None)
    assert t16.recon.dtype == t16.kl_per_dim.dtype == jnp.float32
    np.testing.assert_allclose(t16.recon, t32.recon, rtol=0.02)
    np.testing.assert_allclose(t16.kl_per_dim.sum(-1), t32.kl_per_dim.sum(-1), rtol=0.05, atol=0.02)


def test_bfloat16_training_keeps_float32_state_and_learns():
    cfg, _, bf16 = models("mlp")
    graphdef, params = split_model(bf16)
    tx, schedule = build_optimizer(cfg.optimizer, 3e-3, 100)
    step = build_train_step(cfg, graphdef, tx, schedule, make_mesh(jax.devices()[:1]))
    state, x = init_state(params, tx), digits(16)
    losses = []
    for i in range(60):
        state, metrics = step(state, x, jax.random.key(i), True)
        losses.append(float(metrics["loss"]))
    assert all(
        leaf.dtype == jnp.float32
        for leaf in jax.tree.leaves((state.params, state.opt_state))
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    )
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_deterministic_gpu_flags_are_added_only_when_asked(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_autotune_level=4 --foo=1")
    assert configure_determinism(gpu=False) == "--xla_gpu_autotune_level=4 --foo=1"
    flags = configure_determinism(gpu=True).split()
    assert flags == ["--xla_gpu_autotune_level=4", "--foo=1", DETERMINISTIC_XLA_FLAGS[0]]


def test_a_run_without_gpu_determinism_records_plain_xla_flags(tmp_path):
    args = [f"--config={BASELINE}", f"--workdir={tmp_path}", "--run_id=fast"]
    overrides = [f"--config.{o}" for o in [*TINY, "training.epochs=1"]]
    result = run_script(
        "train.py",
        *args,
        *overrides,
        "--config.compile.deterministic_gpu=false",
        env={"XLA_FLAGS": ""},
    )
    assert result.returncode == 0, result.stderr
    prov = json.loads((tmp_path / "checkpoints" / "fast" / "provenance.json").read_text())
    assert not any(f.split("=")[0] in prov["xla_flags"] for f in DETERMINISTIC_XLA_FLAGS)
