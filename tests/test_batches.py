"""On-device and streamed training batches: identical batches in the same order, from the key."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from src.data.batches import (
    DeviceBatches,
    StreamedBatches,
    fits_on_device,
    gather,
    make_batches,
    next_epoch_order,
    two_epoch_order,
)
from src.data.pipeline import epoch_permutation, take_batch
from src.training.device.parallel import make_mesh, split_on_devices
from src.utils.config import load_config
from tests.helpers import BASELINE

N, B = 50, 8
PER_EPOCH = N // B  # 6 full batches; 2 examples dropped per epoch


@pytest.fixture
def setup():
    x = np.random.default_rng(0).uniform(size=(N, 3, 3, 1)).astype(np.float32)
    sharding = split_on_devices(make_mesh(jax.devices()))
    return x, jax.random.key(7), sharding


def expected_batch(x, key, step):
    epoch, position = divmod(step, PER_EPOCH)
    perm = np.asarray(epoch_permutation(key, epoch, N))
    return x[perm[position * B : (position + 1) * B]]


def test_device_and_streamed_batches_are_identical(setup):
    x, key, sharding = setup
    device = DeviceBatches(x, key, B, PER_EPOCH, sharding)
    streamed = StreamedBatches(x, key, B, PER_EPOCH, sharding, prefetch=2)
    try:
        steps = list(range(3 * PER_EPOCH + 2))  # crosses epoch boundaries
        for step in steps:
            a, b = np.asarray(device(step)), np.asarray(streamed(step))
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, expected_batch(x, key, step))
        # Epochs differ in order; within an epoch no example repeats.
        e0 = np.concatenate([np.asarray(device(s)) for s in range(PER_EPOCH)])
        e1 = np.concatenate([np.asarray(device(s)) for s in range(PER_EPOCH, 2 * PER_EPOCH)])
        assert not np.array_equal(e0, e1)
        assert len(np.unique(e0.reshape(len(e0), -1), axis=0)) == PER_EPOCH * B
    finally:
        streamed.close()


@pytest.mark.parametrize("n", [1, 4, 2 * PER_EPOCH + 1])
def test_chunks_hold_the_batches_of_their_steps(setup, n):
    """A chunk is gathered inside the call that takes it (jit) or eagerly: the same rows."""
    x, key, sharding = setup
    device = DeviceBatches(x, key, B, PER_EPOCH, sharding)
    for step in (0, PER_EPOCH - 2, 5 * PER_EPOCH):  # the second crosses an epoch, the third jumps
        want = np.concatenate([expected_batch(x, key, s) for s in range(step, step + n)])
        chunk = device.chunk(step, n)
        np.testing.assert_array_equal(np.asarray(gather(chunk)), want)
        np.testing.assert_array_equal(np.asarray(jax.jit(gather)(chunk)), want)


def test_streamed_batches_restart_at_any_step(setup):
    x, key, sharding = setup
    streamed = StreamedBatches(x, key, B, PER_EPOCH, sharding, prefetch=3)
    try:
        for step in (0, 1, 9, 10, 4, 5):  # a jump (resume) restarts the thread there
            np.testing.assert_array_equal(np.asarray(streamed(step)), expected_batch(x, key, step))
    finally:
        streamed.close()
    assert streamed.thread is None


def test_stream_errors_reach_the_caller(setup):
    x, key, sharding = setup
    streamed = StreamedBatches(x, key, B, 0, sharding, prefetch=1)  # divmod by zero in the thread
    with pytest.raises(ZeroDivisionError):
        streamed(0)
    streamed.close()


def test_on_device_batches_copy_nothing_from_the_host_per_step(setup):
    x, key, sharding = setup
    device = DeviceBatches(x, key, B, PER_EPOCH, sharding)
    device(0)  # compiles and draws the epoch-0 order
    # "disallow" refuses implicit copies (e.g. a host array fed to the gather); the explicit
    # 4-byte batch offsets (copied once per position) are allowed.
    with jax.transfer_guard_host_to_device("disallow"):
        for step in range(1, PER_EPOCH):
            device(step)
        with pytest.raises(Exception, match="Disallowed host-to-device"):  # the guard bites
            take_batch(x, device.order, jax.device_put(np.int32(0)), B)


def test_auto_chooses_by_device_memory(setup):
    x, key, sharding = setup

    class Device:
        def __init__(self, limit):
            self.limit = limit

        def memory_stats(self):
            return None if self.limit is None else {"bytes_limit": self.limit}

    assert fits_on_device(1000, [Device(None)], 0.5)  # CPU: no limit reported
    assert fits_on_device(1000, [Device(2000)], 0.5)
    assert not fits_on_device(1001, [Device(2000)], 0.5)
    assert not fits_on_device(10, [Device(10**6), Device(10)], 0.5)
    for setting, kind in (
        ("auto", DeviceBatches),
        ("true", DeviceBatches),
        ("false", StreamedBatches),
    ):
        cfg = load_config(BASELINE, overrides=[f"data.on_device={setting}"]).data
        batches = make_batches(x, key, B, PER_EPOCH, sharding, cfg)
        assert isinstance(batches, kind)
        batches.close()


def test_compiled_epoch_order_equals_the_eager_permutation():
    """epoch_permutation and two_epoch_order are jitted; the order must not change with that."""
    key = jax.random.key(3)
    with jax.disable_jit():
        eager = [np.asarray(epoch_permutation(key, e, 1437)) for e in range(4)]
    for e in range(3):
        np.testing.assert_array_equal(np.asarray(epoch_permutation(key, e, 1437)), eager[e])
        both = np.asarray(two_epoch_order(key, np.int32(e), 1437, 1408))
        np.testing.assert_array_equal(both, np.concatenate([eager[e][:1408], eager[e + 1][:1408]]))
        if e > 0:
            moved_on = next_epoch_order(
                two_epoch_order(key, np.int32(e - 1), 1437, 1408), key, np.int32(e), 1437
            )
            np.testing.assert_array_equal(np.asarray(moved_on), both)
