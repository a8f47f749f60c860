"""Model families (mlp, conv, transformer) and likelihoods: shapes, gradients, overfitting, errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sklearn.datasets import load_digits

from src.models.likelihoods import Gaussian
from src.models.registry import build_model
from src.training.device.parallel import make_mesh
from src.training.losses import vae_terms
from src.training.optim import build_optimizer
from src.training.setup import build_train_step
from src.training.state import init_state, split_model
from src.training.step import make_eval_step
from src.utils.config import load_config, load_saved_config
from src.utils.errors import ConfigError
from tests.helpers import BASELINE, REPO, run_script, train

FAMILIES = ["mlp", "conv", "transformer"]
# Small members of each family, so the tests stay fast. The small transformer uses 4x4 patches
# and wider positional embeddings: with 16 tokens and the ViT init (0.02) it sits for hundreds of
# steps on the mean image of a tiny batch before z is used.
SMALL = {
    "mlp": ["model.hidden_dims=[32]"],
    "conv": ["model.conv.channels=[8, 16]"],
    "transformer": [
        "model.hidden_dim=16",
        "model.transformer.heads=2",
        "model.transformer.depth=1",
        "model.transformer.patch_size=4",
        "model.transformer.init_std=0.5",
    ],
}


def small_cfg(family: str, *overrides: str):
    return load_config(BASELINE, {"model": family}, [*SMALL[family], *overrides])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("likelihood, per_pixel", [("bernoulli", 1), ("categorical", 17)])
@pytest.mark.parametrize("image_shape", [(8, 8, 1), (28, 28, 1)])
@pytest.mark.parametrize("batch", [1, 7])
def test_forward_shapes(family, likelihood, per_pixel, image_shape, batch):
    cfg = small_cfg(family, "model.latent_dim=5", f"model.likelihood={likelihood}")
    # Shapes only: neither the parameters nor the forward pass are computed.
    abstract = nnx.eval_shape(lambda: build_model(cfg.model, image_shape, nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract, nnx.Param)

    def forward(params, x):
        model = nnx.merge(graphdef, params)
        mean, logvar = model.encode(x)
        out = model.decode(mean)
        return mean, logvar, out, model.nll(out, x)

    x = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
    mean, logvar, out, nll = jax.eval_shape(forward, params, x)
    assert mean.shape == logvar.shape == (batch, 5)
    assert out.shape == (batch, *image_shape[:2], per_pixel)
    assert nll.shape == (batch,)


@pytest.mark.parametrize(
    "family, overrides",
    [
        ("mlp", ["model.likelihood=gaussian", "model.gaussian.scale=shared"]),
        ("conv", ["model.likelihood=gaussian", "model.gaussian.scale=per_pixel"]),
        ("transformer", ["model.transformer.readout=cls", "model.transformer.dropout=0.1"]),
        ("transformer", ["model.likelihood=categorical"]),
    ],
)
def test_gradients_reach_every_parameter(family, overrides):
    cfg = small_cfg(family, "model.latent_dim=3", *overrides)
    graphdef, params = split_model(build_model(cfg.model, (8, 8, 1), nnx.Rngs(0)))
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
    eps = jax.random.normal(jax.random.key(2), (4, 3))

    @jax.jit
    def grads(params):
        def loss(p):
            t = vae_terms(nnx.merge(graphdef, p), x, eps, jax.random.key(3))
            return t.recon.mean() + t.kl_per_dim.sum(-1).mean()

        return jax.grad(loss)(params)

    flat = jax.tree_util.tree_leaves_with_path(grads(params))
    dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
    assert dead == []
    assert len(flat) == len(jax.tree.leaves(params))


def digits_batch(n: int) -> jax.Array:
    """The first n digits, binarized so a perfect reconstruction has zero loss."""
    images = load_digits().images[:n].astype(np.float32) / 16.0
    return jnp.asarray((images > 0.5).astype(np.float32)[..., None])


@pytest.mark.parametrize("family", FAMILIES)
def test_overfits_one_batch(family):
    # KL warm-up over more steps than the test runs keeps the KL weight below 1/2, so posterior
    # collapse cannot stop the reconstruction from improving.
    cfg = small_cfg(
        family,
        "training.lr=2e-3",
        "model.latent_dim=4",
        "training.kl.warmup=linear",
        "training.kl.warmup_steps=400",
    )
    model = build_model(cfg.model, (8, 8, 1), nnx.Rngs(0))
    graphdef, params = split_model(model)
    tx, schedule = build_optimizer(cfg.optimizer, cfg.training.lr, 200)
    step = build_train_step(cfg, graphdef, tx, schedule, make_mesh(jax.devices()[:1]))
    state = init_state(params, tx)
    x = digits_batch(8)
    losses = []
    for i in range(200):
        state, metrics = step(state, x, jax.random.fold_in(jax.random.key(0), i), True)
        losses.append(float(metrics["loss"]))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.5 * first, (first, last)


def test_eval_is_deterministic_and_train_dropout_is_not():
    cfg = small_cfg("transformer", "model.transformer.dropout=0.5", "model.latent_dim=3")
    model = build_model(cfg.model, (8, 8, 1), nnx.Rngs(0))
    x = digits_batch(4)
    np.testing.assert_array_equal(model.encode(x)[0], model.encode(x)[0])
    a = model.encode(x, jax.random.key(1))[0]
    b = model.encode(x, jax.random.key(2))[0]
    assert not np.allclose(a, b) and not np.allclose(a, model.encode(x)[0])
    graphdef, params = split_model(model)
    eval_step = make_eval_step(graphdef, make_mesh(jax.devices()[:1]), latent_dim=3)
    mask, key = jnp.ones(4), jax.random.key(5)
    r1, r2 = eval_step(params, x, mask, key), eval_step(params, x, mask, key)
    np.testing.assert_array_equal(r1["recon_sum"], r2["recon_sum"])


def test_learned_gaussian_scale_is_a_parameter():
    cfg = small_cfg(
        "mlp",
        "model.likelihood=gaussian",
        "model.gaussian.scale=per_pixel",
        "model.gaussian.fixed_scale=0.3",
    )
    model = build_model(cfg.model, (8, 8, 1), nnx.Rngs(0))
    _, params = split_model(model)
    assert params["likelihood"]["raw_scale"].shape == (8, 8, 1)
    likelihood = model.likelihood
    assert isinstance(likelihood, Gaussian)
    np.testing.assert_allclose(likelihood.scale(), np.full((8, 8, 1), 0.3), rtol=1e-6)
    fixed = small_cfg("mlp", "model.likelihood=gaussian", "model.gaussian.scale=fixed")
    _, fixed_params = split_model(build_model(fixed.model, (8, 8, 1), nnx.Rngs(0)))
    assert "likelihood" not in fixed_params  # a fixed scale is not trained


@pytest.mark.parametrize(
    "family, overrides, image_shape, message",
    [
        (
            "conv",
            [
                "model.conv.channels=[4, 4, 4]",
                "model.conv.kernel_sizes=[3, 3, 3]",
                "model.conv.strides=[2, 2, 2]",
            ],
            (28, 28, 1),
            "model.conv layer 2 (stride 2): input 7x7 is not divisible by 2",
        ),
        ("conv", ["model.conv.strides=[3, 2]"], (8, 8, 1), "layer 0 (stride 3): input 8x8"),
        (
            "transformer",
            ["model.transformer.patch_size=3"],
            (8, 8, 1),
            "model.transformer.patch_size (3) must divide the image height and width (8x8)",
        ),
    ],
)
def test_shape_mismatch_is_a_config_error_at_build(family, overrides, image_shape, message):
    cfg = small_cfg(family, *overrides)
    with pytest.raises(ConfigError) as err:
        build_model(cfg.model, image_shape, nnx.Rngs(0))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.conv.strides=[2]", "one entry per layer, got lengths channels=2"),
        ("model.hidden_dim=30", "model.hidden_dim (30) must be divisible by"),
        ("model.transformer.dropout=1.0", "model.transformer.dropout must be in [0, 1)"),
        ("model.likelihood=poisson", "model.likelihood: 'poisson' is not one of"),
        ("model.gaussian.scale=diag", "model.gaussian.scale: 'diag' is not one of"),
        ("training.kl.warmup=cosine", "training.kl.warmup: 'cosine' is not one of"),
        ("training.kl.free_bits=-1", "training.kl.free_bits must be >= 0"),
    ],
)
def test_bad_model_values_are_config_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(BASELINE, overrides=[override])
    assert message in str(err.value)


@pytest.mark.parametrize(
    "model, override, message",
    [
        ("transformer", "model.transformer.patch_size=3", "patch_size (3) must divide"),
        ("conv", "model.conv.strides=[3, 2]", "model.conv layer 0 (stride 3)"),
    ],
)
def test_bad_model_config_exits_2_at_the_cli(tmp_path, model, override, message):
    result = run_script(
        "train.py",
        f"--config={BASELINE}",
        f"--model={model}",
        f"--config.{override}",
        f"--workdir={tmp_path}",
        "--run_id=bad",
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_baseline_with_model_conv_trains_from_the_cli(tmp_path):
    result = run_script(
        "train.py",
        f"--config={BASELINE}",
        "--model=conv",
        f"--workdir={tmp_path}",
        "--run_id=conv",
        "--config.model.conv.channels=[4, 8]",
        "--config.training.epochs=1",
        "--config.training.batch_size=256",
        "--config.logging.every_steps=5",
        "--config.eval.every_steps=5",
        "--config.checkpoint.every_steps=5",
        "--config.logging.console=false",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "checkpoints" / "conv" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["param_count"] > 0 and metrics["model_bytes"] == 4 * metrics["param_count"]
    train = [r for r in metrics["history"] if r["split"] == "train"]
    assert {"loss", "elbo", "recon", "kl", "kl_weight", "kl_per_dim"} <= set(train[-1])
    assert train[-1]["kl_weight"] == 1.0  # beta = 1, no warm-up in the baseline


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, overrides",
    [
        ("conv", []),
        ("transformer", []),
        # The seed's large transformer: completes a short run on CPU.
        ("transformer", ["model.latent_dim=512", "model.hidden_dim=768"]),
    ],
)
def test_family_experiment_trains(tmp_path, experiment, overrides):
    short = [
        "training.epochs=1",
        "logging.every_steps=11",
        "eval.every_steps=22",
        "checkpoint.every_steps=22",
        "logging.console=false",
        *overrides,
    ]
    experiment_file = REPO / "configs" / "experiment" / f"{experiment}.yaml"
    record, paths = train(tmp_path, "run", short, experiment_file)
    assert record["status"] == "completed"
    val = [r for r in record["history"] if r["split"] == "val"]
    latent_dim = load_saved_config(paths.config).model.latent_dim
    assert np.isfinite(val[-1]["elbo"]) and len(val[-1]["kl_per_dim"]) == latent_dim
