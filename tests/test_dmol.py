"""The discretized logistic mixture likelihood (PixelCNN++ / VDVAE) against brute force."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import special, stats

from src.models.likelihoods import (
    DMOL_MIN_BIN_PROB,
    DiscretizedLogisticMixture,
    dmol_log_prob,
    dmol_mean,
    dmol_rows,
)
from src.models.registry import build_model
from src.utils.config import load_config
from src.utils.errors import ConfigError
from tests.helpers import BASELINE, run_script


def random_params(rng: np.random.Generator, shape: tuple[int, ...], channels: int, mixtures: int):
    """[*shape, rows * M] parameters with means in [-1, 1] and moderate scales."""
    rows = dmol_rows(channels)
    p = rng.normal(size=(*shape, rows, mixtures))
    p[..., 1 : 1 + channels, :] = rng.uniform(-1.0, 1.0, size=(*shape, channels, mixtures))
    p[..., 1 + channels : 1 + 2 * channels, :] = rng.uniform(
        -4.0, 0.5, size=(*shape, channels, mixtures)
    )
    return p.reshape(*shape, rows * mixtures)


def reference_log_prob(params: np.ndarray, x: np.ndarray, levels: int, min_log_scale: float):
    """Pixel by pixel, component by component, in float64 with scipy's logistic CDF:
    [batch, H, W] log p(x)."""
    batch, height, width, channels = x.shape
    rows = dmol_rows(channels)
    out = np.zeros((batch, height, width))
    half = 1.0 / (levels - 1)
    for b, i, j in itertools.product(range(batch), range(height), range(width)):
        p = params[b, i, j].astype(np.float64).reshape(rows, -1)
        k = np.clip(np.round(x[b, i, j].astype(np.float64) * (levels - 1)), 0, levels - 1)
        y = 2.0 * k / (levels - 1) - 1.0
        log_weights = special.log_softmax(p[0])
        terms = []
        for m in range(p.shape[1]):
            total, row = log_weights[m], 0
            for c in range(channels):
                mean = p[1 + c, m]
                for prev in range(c):
                    mean += np.tanh(p[1 + 2 * channels + row, m]) * y[prev]
                    row += 1
                scale = math.exp(max(p[1 + channels + c, m], min_log_scale))
                dist = stats.logistic(loc=mean, scale=scale)
                if k[c] == 0:
                    total += dist.logcdf(y[c] + half)
                elif k[c] == levels - 1:
                    total += dist.logsf(y[c] - half)
                else:
                    prob = dist.cdf(y[c] + half) - dist.cdf(y[c] - half)
                    if prob > DMOL_MIN_BIN_PROB:
                        total += math.log(prob)
                    else:  # PixelCNN++'s fallback: density at the bin centre times its width
                        total += dist.logpdf(y[c]) + math.log(2.0 * half)
            terms.append(total)
        out[b, i, j] = special.logsumexp(terms)
    return out


@pytest.mark.parametrize("channels, levels", [(1, 256), (3, 256), (1, 17), (2, 5)])
def test_log_prob_equals_brute_force(channels: int, levels: int):
    rng = np.random.default_rng(channels * 1000 + levels)
    params = random_params(rng, (2, 3, 4), channels, mixtures=4).astype(np.float32)
    k = rng.integers(0, levels, size=(2, 3, 4, channels))
    k[0, 0, 0] = 0  # both edge bins appear in every case
    k[0, 0, 1] = levels - 1
    x = (k / (levels - 1)).astype(np.float32)
    out = dmol_log_prob(jnp.asarray(params), jnp.asarray(x), levels, -7.0)
    expected = reference_log_prob(params, x, levels, -7.0)
    assert out.shape == (2, 3, 4)
    np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("channels, levels", [(1, 256), (1, 17), (3, 12)])
def test_probabilities_over_all_levels_sum_to_one(channels: int, levels: int):
    rng = np.random.default_rng(levels)
    params = random_params(rng, (1, 1, 1), channels, mixtures=5)
    values = np.array(list(itertools.product(range(levels), repeat=channels)))
    x = (values / (levels - 1)).astype(np.float32)[:, None, None, :]
    p = jnp.broadcast_to(jnp.asarray(params, jnp.float32), (len(values), 1, 1, params.shape[-1]))
    probs = jnp.exp(dmol_log_prob(p, jnp.asarray(x), levels, -7.0))
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-4)


def test_edge_bins_take_the_tails():
    """x = 0 scores the CDF up to the first bin's upper edge, x = 1 everything above the last
    bin's lower edge; both stay finite for a mean far beyond the range and a tiny scale."""
    levels, half = 256, 1.0 / 255
    for mean, log_s in [(0.3, -2.0), (5.0, -7.0), (-5.0, -7.0)]:
        params = jnp.asarray([[[[0.0, mean, log_s]]]], jnp.float32)  # one component, C = 1
        low, high = (
            float(dmol_log_prob(params, jnp.full((1, 1, 1, 1), v), levels, -7.0)[0, 0, 0])
            for v in (0.0, 1.0)
        )
        dist = stats.logistic(loc=mean, scale=math.exp(log_s))
        assert low == pytest.approx(dist.logcdf(-1.0 + half), rel=1e-4, abs=1e-4)
        assert high == pytest.approx(dist.logsf(1.0 - half), rel=1e-4, abs=1e-4)
        assert math.isfinite(low) and math.isfinite(high)


def test_tiny_middle_bins_use_the_density_fallback():
    """A middle bin far in the tail: density at the centre times the bin width, as PixelCNN++."""
    levels = 256
    params = jnp.asarray([[[[0.0, -0.8, -5.0]]]], jnp.float32)
    x = jnp.full((1, 1, 1, 1), 200 / 255)
    out = float(dmol_log_prob(params, x, levels, -7.0)[0, 0, 0])
    dist = stats.logistic(loc=-0.8, scale=math.exp(-5.0))
    y, half = 2 * 200 / 255 - 1, 1 / 255
    assert dist.cdf(y + half) - dist.cdf(y - half) < DMOL_MIN_BIN_PROB
    assert out == pytest.approx(dist.logpdf(y) + math.log(2 * half), rel=1e-5)


def test_min_log_scale_floors_the_scale():
    params = jnp.asarray([[[[0.0, 0.0, -20.0]]]], jnp.float32)
    x = jnp.full((1, 1, 1, 1), 0.6)
    floored = dmol_log_prob(params, x, 256, -7.0)
    at_floor = dmol_log_prob(params.at[..., 2].set(-7.0), x, 256, -7.0)
    np.testing.assert_array_equal(floored, at_floor)


def test_gradients_are_finite_at_extreme_parameters():
    rng = np.random.default_rng(3)
    params = rng.normal(scale=30.0, size=(2, 2, 2, 10 * 3)).astype(np.float32)
    x = jnp.asarray(rng.integers(0, 256, size=(2, 2, 2, 3)) / 255, jnp.float32)
    grad = jax.grad(lambda p: dmol_log_prob(p, x, 256, -7.0).sum())(jnp.asarray(params))
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_channel_coefficients_make_later_channels_depend_on_earlier_ones():
    """C = 3: with a strong green|red coefficient, green is likely where it follows red."""
    rows = dmol_rows(3)
    p = np.zeros((rows, 1), np.float32)
    p[4:7] = -4.0  # small scales
    p[7] = 10.0  # tanh(10) ~ 1: green mean = 0 + red
    params = jnp.asarray(p.reshape(1, 1, 1, rows))
    follows = jnp.asarray([[[[0.8, 0.8, 0.5]]]], jnp.float32)
    ignores = jnp.asarray([[[[0.8, 0.5, 0.5]]]], jnp.float32)
    assert float(dmol_log_prob(params, follows, 256, -7.0)[0, 0, 0]) > float(
        dmol_log_prob(params, ignores, 256, -7.0)[0, 0, 0]
    )


def test_mean_follows_the_coefficients_and_the_weights():
    rows = dmol_rows(3)
    p = np.zeros((rows, 2), np.float32)
    p[0] = [50.0, 0.0]  # component 0 has all the weight
    p[1:4, 0] = [0.2, -0.1, 0.0]  # means in [-1, 1]
    p[7:10, 0] = np.arctanh([0.5, 0.25, -0.5])  # g|r, b|r, b|g
    mean = np.asarray(dmol_mean(jnp.asarray(p.reshape(1, 1, 1, -1)), 3))[0, 0, 0]
    red = 0.2
    green = -0.1 + 0.5 * red
    blue = 0.0 + 0.25 * red - 0.5 * green
    np.testing.assert_allclose(mean, (np.array([red, green, blue]) + 1) / 2, atol=1e-6)


@pytest.mark.parametrize("family", ["mlp", "conv", "transformer"])
@pytest.mark.parametrize("channels", [1, 3])
def test_model_shapes_with_one_and_three_channels(family: str, channels: int):
    cfg = load_config(
        BASELINE,
        {"model": family},
        [
            "model.likelihood=dmol",
            "model.dmol.levels=17",
            "model.dmol.mixtures=4",
            "model.latent_dim=3",
        ],
    )
    image_shape = (8, 8, channels)
    abstract = nnx.eval_shape(lambda: build_model(cfg.model, image_shape, nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract, nnx.Param)
    assert isinstance(abstract.likelihood, DiscretizedLogisticMixture)

    def forward(params, x):
        model = nnx.merge(graphdef, params)
        out = model.decode(model.encode(x)[0])
        return out, model.nll(out, x), model.mean_image(out)

    x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    out, nll, mean = jax.eval_shape(forward, params, x)
    assert out.shape == (2, 8, 8, 4 * (3 if channels == 1 else 10))
    assert nll.shape == (2,) and mean.shape == (2, *image_shape)


def test_nll_is_minus_the_summed_pixel_log_probs():
    rng = np.random.default_rng(5)
    lik = DiscretizedLogisticMixture(channels=3, mixtures=2, levels=256, min_log_scale=-7.0)
    params = jnp.asarray(random_params(rng, (2, 2, 3), 3, 2), jnp.float32)
    x = jnp.asarray(rng.integers(0, 256, size=(2, 2, 3, 3)) / 255, jnp.float32)
    expected = -dmol_log_prob(params, x, 256, -7.0).reshape(2, -1).sum(-1)
    np.testing.assert_allclose(lik(params, x), expected, rtol=1e-6)


# --- Configuration: the likelihood must see the data's own grey levels ---------------------


@pytest.mark.parametrize(
    "data, overrides, message",
    [
        ("mnist", ["data.binarize=dynamic"], "data.binarize=dynamic makes the images binary"),
        ("digits", ["data.binarize=static"], "data.binarize=static makes the images binary"),
        ("digits", [], "model.dmol.levels=256 does not match data.name=digits, which has 17"),
        ("mnist", ["data.binarize=none", "model.dmol.levels=17"], "set model.dmol.levels=256"),
        ("fashion_mnist", ["data.binarize=none", "model.dmol.levels=255"], "has 256 grey"),
        ("digits", ["model.dmol.levels=1"], "model.dmol.levels must be >= 2"),
        ("digits", ["model.dmol.levels=17", "model.dmol.mixtures=0"], "model.dmol.mixtures"),
    ],
)
def test_dmol_config_errors(data: str, overrides: list[str], message: str):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(BASELINE, {"data": data}, ["model.likelihood=dmol", *overrides])


@pytest.mark.parametrize(
    "data, overrides",
    [
        ("digits", ["model.dmol.levels=17"]),
        ("mnist", ["data.binarize=none"]),
        ("fashion_mnist", ["data.binarize=none"]),
        ("npz", ["model.dmol.levels=4"]),  # levels not known from the name: as configured
    ],
)
def test_dmol_configs_that_match_their_data_load(data: str, overrides: list[str]):
    cfg = load_config(BASELINE, {"data": data}, ["model.likelihood=dmol", *overrides])
    assert cfg.model.likelihood == "dmol"


def test_dmol_on_binarized_mnist_exits_2_with_one_line(tmp_path: Path):
    result = run_script(
        "train.py",
        f"--config={BASELINE}",
        "--data=mnist",
        f"--workdir={tmp_path}",
        "--config.model.likelihood=dmol",
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.binarize=dynamic" in lines[0], result.stderr
