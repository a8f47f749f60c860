"""Splits, binarization and batching. Shuffling comes from PRNG keys, never from global state."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from src.data.sources import load_dataset
from src.utils.errors import ConfigError, DataError


class Splits(NamedTuple):
    """Images per split, float32 [N, H, W, C] (in [0, 1] except for real-valued synthetic data)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    info: dict[str, Any]  # the source's facts plus split sizes, for provenance.json


def split_indices(
    n: int, split_seed: int, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A permutation of range(n) fixed by split_seed, cut into train / val / test."""
    perm = np.random.default_rng(split_seed).permutation(n)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return perm[n_val + n_test :], perm[:n_val], perm[n_val : n_val + n_test]


def load_splits(cfg: Any) -> Splits:
    """Loads the dataset named by cfg (the `data` section) and splits it deterministically.

    A split the source provides is kept as is (MNIST's 10k test images, npz val/test arrays);
    a missing one is held out from the training images by data.split_seed with
    data.val_fraction / data.test_fraction of them.
    """
    data = load_dataset(cfg)
    val_fraction = cfg.val_fraction if data.val is None else 0.0
    test_fraction = cfg.test_fraction if data.test is None else 0.0
    keep, held_val, held_test = split_indices(
        len(data.train), cfg.split_seed, val_fraction, test_fraction
    )
    train = data.train[keep]
    val = data.train[held_val] if data.val is None else data.val
    test = data.train[held_test] if data.test is None else data.test
    for name, x in zip(("train", "val", "test"), (train, val, test), strict=True):
        if len(x) == 0:
            raise ConfigError(
                f"data: the {name} split is empty; adjust data.val_fraction/test_fraction"
            )
    if cfg.binarize != "none":
        lo, hi = min(float(x.min()) for x in (train, val, test)), max(
            float(x.max()) for x in (train, val, test)
        )
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"data.binarize={cfg.binarize} needs values in [0, 1]; data.name={cfg.name} "
                f"spans [{lo:g}, {hi:g}]"
            )
    if cfg.binarize == "static":
        train, val, test = ((x > 0.5).astype(np.float32) for x in (train, val, test))
    if cfg.binarize == "dynamic":
        val, test = fixed_binarization(val, test, cfg.eval_binarize_seed)
    info = {
        "name": cfg.name,
        **data.info,
        "image_shape": list(train.shape[1:]),
        "num_examples": {"train": len(train), "val": len(val), "test": len(test)},
        "held_out_from_train": [
            s for s, x in (("val", data.val), ("test", data.test)) if x is None
        ],
    }
    if cfg.binarize == "dynamic":
        info["eval_binarize_seed"] = cfg.eval_binarize_seed
    return Splits(train, val, test, info)


def fixed_binarization(
    val: np.ndarray, test: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One Bernoulli(intensity) draw of the val and test images from seed.

    Training re-draws its binary images every step (dynamic binarization); evaluation scores one
    fixed binary data set, so that a reported NLL is that of a fixed set of binary images and
    does not change with the evaluation batch size or key. val and test use distinct streams.
    """
    val_rng, test_rng = (np.random.default_rng([seed, i]) for i in (0, 1))
    return (
        (val_rng.random(val.shape, np.float32) < val).astype(np.float32),
        (test_rng.random(test.shape, np.float32) < test).astype(np.float32),
    )


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch; the incomplete last batch is dropped so every step sees batch_size."""
    if batch_size > num_examples:
        raise ConfigError(
            f"training.batch_size ({batch_size}) exceeds the training split ({num_examples} examples)"
        )
    return num_examples // batch_size


def planned_steps(training: Any, num_examples: int) -> tuple[int, int]:
    """(steps per epoch, total steps) of training.epochs passes over num_examples; the total is
    also the horizon of the learning-rate schedule."""
    per_epoch = steps_per_epoch(num_examples, training.batch_size)
    return per_epoch, training.epochs * per_epoch


@functools.partial(jax.jit, static_argnames="num_examples")
def epoch_permutation(data_key: jax.Array, epoch: int | jax.Array, num_examples: int) -> jax.Array:
    """The example order of one epoch: a pure function of (data_key, epoch), so resume replays it.

    Compiled (one dispatch instead of a dozen eager ops); integer arithmetic, so the order is
    the same either way.
    """
    return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)


def binarize(key: jax.Array, x: jax.Array) -> jax.Array:
    """Dynamic binarization: each pixel ~ Bernoulli(intensity), redrawn from the key."""
    return jax.random.bernoulli(key, x).astype(x.dtype)


def padded_batches(x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads x to a multiple of batch_size for evaluation; returns [num_batches, batch, ...] and a mask."""
    n = len(x)
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    padded = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    mask = np.arange(num_batches * batch_size) < n
    return (
        padded.reshape(num_batches, batch_size, *x.shape[1:]),
        mask.reshape(num_batches, batch_size).astype(np.float32),
    )


@functools.partial(jax.jit, static_argnames="batch_size")
def take_batch(x: jax.Array, perm: jax.Array, start: jax.Array, batch_size: int) -> jax.Array:
    """x[perm[start : start + batch_size]], gathered on device (one compilation per shape)."""
    idx = jax.lax.dynamic_slice_in_dim(perm, start, batch_size)
    return jnp.take(x, idx, axis=0)
