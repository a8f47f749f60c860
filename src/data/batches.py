"""Training batches by step: the split resident on the device, or streamed from the host.

Both providers give batch `step` = train_x[perm[p * B : (p + 1) * B]] with
(epoch, p) = divmod(step, steps_per_epoch) and perm = epoch_permutation(data_key, epoch), so a
run produces the same batches, in the same order, whichever is used (and a resumed run
replays them).

- DeviceBatches: train_x is copied to the devices once; a call's batches are gathered there,
  inside the compiled call that uses them (`Rows`, `gather`): no host-to-device copy and no
  extra dispatch per step; each device keeps only its own rows.
- StreamedBatches: for data that does not fit. A background thread gathers the next
  `prefetch` batches on the host and copies them to the devices while the current step runs;
  in a multi-host run each host gathers and copies only its own rows.

`sharding` is the layout of a batch (split over the mesh on its leading axis); the resident
split is replicated over the same mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from src.data.pipeline import epoch_permutation, take_batch


@functools.partial(jax.jit, static_argnames=("num_examples", "used"))
def two_epoch_order(data_key: jax.Array, epoch: jax.Array, num_examples: int, used: int):
    """The first `used` entries of epoch's order followed by those of epoch + 1's.

    One compiled call instead of eager ops (permutations, slices, a concatenation), each of
    which the CPU backend runs inline on the host. Integer arithmetic only, so the order is
    the same as epoch_permutation's, bit for bit (tested).
    """
    orders = [epoch_permutation(data_key, e, num_examples)[:used] for e in (epoch, epoch + 1)]
    return jnp.concatenate(orders)


@functools.partial(jax.jit, static_argnames="num_examples")
def next_epoch_order(order: jax.Array, data_key: jax.Array, epoch: jax.Array, num_examples: int):
    """two_epoch_order(epoch) from two_epoch_order(epoch - 1): one new permutation, not two."""
    used = order.shape[0] // 2
    following = epoch_permutation(data_key, epoch + 1, num_examples)[:used]
    return jnp.concatenate([order[used:], following])


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["x", "order", "start"], meta_fields=["size"]
)
@dataclasses.dataclass(frozen=True)
class Rows:
    """x[order[start : start + size]], not gathered yet: the compiled call that takes it
    gathers (see gather), so the gather needs no dispatch of its own. size is static."""

    x: jax.Array
    order: jax.Array
    start: jax.Array
    size: int


def gather(batches: jax.Array | Rows) -> jax.Array:
    """The batches themselves: Rows gathered (inside jit, part of the caller's program)."""
    if isinstance(batches, Rows):
        return take_batch(batches.x, batches.order, batches.start, batches.size)
    return batches


def batch_spec(batches: jax.Array | Rows, batch_size: int) -> jax.ShapeDtypeStruct:
    """Shape and dtype of one batch of `batches`."""
    x = batches.x if isinstance(batches, Rows) else batches
    return jax.ShapeDtypeStruct((batch_size, *x.shape[1:]), x.dtype)


class DeviceBatches:
    """The whole training split on the device; the batches of a call are gathered on device."""

    on_device = True

    def __init__(
        self,
        x: np.ndarray,
        data_key: jax.Array,
        batch_size: int,
        steps_per_epoch: int,
        sharding: NamedSharding,
    ):
        self.x = jax.device_put(x, NamedSharding(sharding.mesh, P()))
        self.data_key, self.batch_size, self.per_epoch = data_key, batch_size, steps_per_epoch
        # One step's batch, gathered by each device from its own replica, of which it keeps
        # its rows: no data crosses devices or hosts.
        self.split = jax.jit(gather, out_shardings=sharding)
        self.order: jax.Array | None = None
        self.order_epoch = -1
        # position -> its first row in the order, on the devices; copied once per position,
        # not once per call (a host-to-device transfer on every step).
        self.starts: dict[int, jax.Array] = {}

    def __call__(self, step: int) -> jax.Array:
        return self.split(self.chunk(step, 1))

    def chunk(self, step: int, n: int) -> Rows | jax.Array:
        """The batches of steps step .. step + n - 1, [n * batch_size, ...], as Rows to gather.

        Rows of the replicated split and order: each device gathers from its own copies.
        One gather of fixed size from the used rows of this epoch's order followed by the next
        epoch's, so a call that crosses into the next epoch (training.steps_per_call) costs the
        same and compiles nothing new. n beyond the next epoch (steps_per_call above an epoch
        and a step) is split up and returned gathered, an array: one more program to compile.
        """
        epoch, position = divmod(step, self.per_epoch)
        if position + n > 2 * self.per_epoch:
            head = self.per_epoch - position
            parts = [self.chunk(step, head), self.chunk(step + head, n - head)]
            return jnp.concatenate([gather(part) for part in parts])
        if epoch != self.order_epoch:
            if self.order is not None and epoch == self.order_epoch + 1:  # the usual change
                order = next_epoch_order(self.order, self.data_key, np.int32(epoch), len(self.x))
            else:  # the first call, or a jump (resume)
                used = self.per_epoch * self.batch_size  # the rest of an epoch's order is dropped
                order = two_epoch_order(self.data_key, np.int32(epoch), len(self.x), used)
            # Replicated once per epoch, not copied from one device to the others every call.
            self.order, self.order_epoch = jax.device_put(order, self.x.sharding), epoch
        assert self.order is not None
        # Images never leave the device; the offsets are copied once each, explicitly.
        if position not in self.starts:
            row = np.int32(position * self.batch_size)
            self.starts[position] = jax.device_put(row, self.x.sharding)
        return Rows(self.x, self.order, self.starts[position], n * self.batch_size)

    def close(self) -> None:
        """Nothing to stop; present so both providers are used the same way."""


class StreamedBatches:
    """Batches gathered on the host and copied to the devices by a prefetching thread.

    Steps are expected in order; asking for any other step (e.g. after a resume) restarts the
    thread there. An exception in the thread is re-raised by the next call.
    """

    on_device = False

    def __init__(
        self,
        x: np.ndarray,
        data_key: jax.Array,
        batch_size: int,
        steps_per_epoch: int,
        sharding: NamedSharding,
        prefetch: int,
    ):
        self.x, self.sharding, self.prefetch = x, sharding, prefetch
        self.rows = process_rows(sharding, batch_size)
        self.batch_shape = (batch_size, *x.shape[1:])
        self.data_key, self.batch_size, self.per_epoch = data_key, batch_size, steps_per_epoch
        self.next_step: int | None = None
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()
        self.queue: queue.Queue[Any] = queue.Queue()

    def __call__(self, step: int) -> jax.Array:
        if step != self.next_step:
            self._start(step)
        item = self.queue.get()
        if isinstance(item, BaseException):
            self.next_step = None
            raise item
        self.next_step = step + 1
        return item

    def chunk(self, step: int, n: int) -> jax.Array:
        """The batches of steps step .. step + n - 1 concatenated: [n * batch_size, ...]."""
        return jnp.concatenate([self(s) for s in range(step, step + n)])

    def _start(self, step: int) -> None:
        self.close()
        self.stop = threading.Event()
        self.queue = queue.Queue(maxsize=self.prefetch)
        self.thread = threading.Thread(
            target=self._produce, args=(step, self.stop, self.queue), daemon=True
        )
        self.thread.start()

    def _produce(self, step: int, stop: threading.Event, out: queue.Queue) -> None:
        perm, perm_epoch = np.empty(0, np.int64), -1
        while not stop.is_set():
            try:
                epoch, position = divmod(step, self.per_epoch)
                if epoch != perm_epoch:
                    perm = np.asarray(epoch_permutation(self.data_key, epoch, len(self.x)))
                    perm_epoch = epoch
                idx = perm[position * self.batch_size : (position + 1) * self.batch_size]
                item: Any = jax.make_array_from_process_local_data(
                    self.sharding, self.x[idx[self.rows]], self.batch_shape
                )
            except BaseException as e:  # handed to the consumer, which raises it
                item = e
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            step += 1

    def close(self) -> None:
        """Stops the thread (dropping prefetched batches)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        self.next_step = None


def process_rows(sharding: jax.sharding.Sharding, batch_size: int) -> slice:
    """The rows of a [batch_size, ...] batch laid out by `sharding` that this process's devices
    hold: all of them in a single-process run, one contiguous block per host otherwise."""
    index = sharding.devices_indices_map((batch_size,))
    blocks = [index[d][0].indices(batch_size)[:2] for d in sharding.addressable_devices]
    return slice(min(b[0] for b in blocks), max(b[1] for b in blocks))


def fits_on_device(nbytes: int, devices: Any, fraction: float) -> bool:
    """Whether nbytes take at most `fraction` of every device's memory.

    Devices that report no memory limit (the CPU backend, where device memory is host memory)
    always fit.
    """
    for device in devices:
        stats = device.memory_stats()
        if stats and "bytes_limit" in stats and nbytes > fraction * stats["bytes_limit"]:
            return False
    return True


def make_batches(
    x: np.ndarray,
    data_key: jax.Array,
    batch_size: int,
    steps_per_epoch: int,
    sharding: NamedSharding,
    cfg: Any,
) -> DeviceBatches | StreamedBatches:
    """The provider chosen by data.on_device (auto: on the device when it fits)."""
    if cfg.on_device == "auto":
        on_device = fits_on_device(
            x.nbytes, sharding.addressable_devices, cfg.device_memory_fraction
        )
    else:
        on_device = cfg.on_device == "true"
    if on_device:
        return DeviceBatches(x, data_key, batch_size, steps_per_epoch, sharding)
    return StreamedBatches(x, data_key, batch_size, steps_per_epoch, sharding, cfg.prefetch)
