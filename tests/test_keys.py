"""The PRNG streams of src/training/keys.py: their derivation and their values, pinned."""

from __future__ import annotations

import jax
import pytest

from src.training import keys

# key_data of each stream for seed 42. A change here changes every number a run produces: the
# histories of earlier runs would no longer repeat.
PINNED = {
    "init": [1832780943, 270669613],
    "data": [64467757, 2916123636],
    "train": [2465931498, 255383827],
    "eval": [3134548294, 894150801],
    "iwae": [75273486, 3122212114],
    "mi": [1770995085, 4163859872],
    "figures": [3986283188, 530567942],
}


def data(key: jax.Array) -> list[int]:
    return jax.random.key_data(key).tolist()


def test_stream_values_are_pinned():
    streams = {**keys.run_keys(42), **keys.estimator_keys(42)}
    assert data(streams.pop("elbo")) == PINNED["eval"]
    assert {name: data(key) for name, key in streams.items()} == PINNED
    assert data(keys.step_key(keys.run_keys(42)["train"], 7)) == [1096897035, 320463389]


def test_split_is_fold_in_so_the_estimator_stream_is_a_fifth_stream():
    root = jax.random.key(42)
    parts = jax.random.split(root, 4)
    assert [data(k) for k in parts] == [data(jax.random.fold_in(root, i)) for i in range(4)]
    five = {data(k)[0] for k in (*parts, jax.random.fold_in(root, keys.ESTIMATOR_STREAM))}
    assert len(five) == 5


def test_the_per_step_keys_are_the_documented_ones():
    train = keys.run_keys(0)["train"]
    step = keys.step_key(train, 3)
    assert data(step) == data(jax.random.fold_in(train, 3))
    assert [data(k) for k in keys.noise_keys(step)] == [data(k) for k in jax.random.split(step)]
    dropout = keys.dropout_key(step)
    assert data(dropout) == data(jax.random.fold_in(step, keys.DROPOUT_STREAM))
    assert data(keys.device_key(dropout, 2)) == data(jax.random.fold_in(dropout, 2))
    assert data(keys.batch_key(train, 5)) == data(jax.random.fold_in(train, 5))


@pytest.mark.parametrize("seed", [0, 1])
def test_streams_of_one_seed_are_distinct(seed: int):
    streams = [*keys.run_keys(seed).values(), *list(keys.estimator_keys(seed).values())[1:]]
    assert len({tuple(data(k)) for k in streams}) == 7
