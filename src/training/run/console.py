"""What a run prints: a header at start, the parameter table, one line per record.

Plain lines only (no carriage returns or colour codes): the console reads the same in a
terminal, a log file or under a scheduler. Lines go to stderr; the final result line of the
train command goes to stdout.

A train line reads

    [train] step 40/990 epoch 2/30 0:03 eta 0:17 loss=116.0 elbo=-116.0 recon=114.5 ...

with numbers in 4 significant digits, positional (scientific only below 1e-4 or from 1e7 on).
Fields that seldom change (kl_weight, lr, skipped_steps; a validation's num_examples) are in the
header and on a line only when they differ from the value shown last. examples_per_sec of an
interval that included compilation is followed by `(incl. X s compile)`: JAX reports the time
it spends tracing, lowering and compiling (jax.monitoring), and the loop marks the end of each
interval and the untimed work (validation, saves), so the compile time is that of the
interval's own timed steps. metrics.json is not affected: it holds the numbers as measured.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax

# The duration events of jax.monitoring that together are the compilation of a program.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = [0.0]  # since the listener was registered, all threads
_listening = [False]

# Shown once in the header, then on a line only when the value changes.
SLOW_KEYS = ("kl_weight", "lr", "skipped_steps", "skipped_grad_norm", "num_examples")
# Shown first, in this order; the other scalars follow in the record's order.
FIRST_KEYS = ("loss", "elbo", "recon", "kl", "grad_norm", "active_units")
HIDDEN_KEYS = ("step", "split", "examples_per_sec")


def _on_duration(event: str, duration_secs: float, **_: str | int) -> None:
    if event in COMPILE_EVENTS:
        _compile_seconds[0] += duration_secs


def compile_seconds() -> float:
    """Seconds JAX has spent compiling in this process since the first call."""
    if not _listening[0]:
        _listening[0] = True
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
    return _compile_seconds[0]


def number(value: Any, digits: int = 4) -> str:
    """value with `digits` significant digits, positional: 1735, 26680, -111.8, 0.7047.

    Integers as they are; scientific notation only where positional would be unreadable
    (|value| >= 1e7 or < 1e-4); nan and inf as Python writes them.
    """
    if isinstance(value, bool | int):
        return str(value)
    value = float(value)
    if not math.isfinite(value) or value == 0:
        return str(value) if value else "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 7 or magnitude < -4:
        return f"{value:.{digits - 1}e}"
    if magnitude >= digits:  # 43035 -> 43040
        return f"{round(value, digits - 1 - magnitude):.0f}"
    return f"{value:.{max(digits - 1 - magnitude, 0)}f}"


def duration(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    s = max(int(round(seconds)), 0)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def size(num_bytes: float) -> str:
    """1.2 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def param_table(params: Any) -> str:
    """The parameters per module path with shape, dtype and count (as big_vision logs them),
    then the count and bytes of each top-level module and the total. Works on arrays and on
    jax.ShapeDtypeStruct (an abstract model)."""
    rows = []
    modules: dict[str, list[int]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        count = math.prod(leaf.shape)
        nbytes = count * leaf.dtype.itemsize
        rows.append((name, str(tuple(leaf.shape)), str(leaf.dtype), f"{count:,}"))
        totals = modules.setdefault(name.split("/")[0], [0, 0])
        totals[0] += count
        totals[1] += nbytes
    count = sum(t[0] for t in modules.values())
    nbytes = sum(t[1] for t in modules.values())
    rows += [("", "", "", "")]
    rows += [(f"{m} (total)", "", "", f"{c:,}") for m, (c, _) in modules.items()]
    rows += [("total", "", size(nbytes), f"{count:,}")]
    header = ("parameter", "shape", "dtype", "count")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(r: Sequence[str]) -> str:
        return (
            f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}"
        ).rstrip()

    return "\n".join(line(r) for r in [header, *rows]) + "\n"


class Console:
    """Prints a run's header and one line per metric record (see the module docstring).

    enabled False prints nothing (logging.console false, or not the writing process); the
    other methods may then still be called.
    """

    def __init__(
        self,
        enabled: bool = True,
        *,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
        epochs: int | None = None,
        start_step: int = 0,
        batch_size: int | None = None,
        stream: Any = None,
    ):
        self.enabled = enabled
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.start_step = start_step
        self.batch_size = batch_size
        self.stream = stream
        self.shown: dict[tuple[str, str], Any] = {}  # (split, key) -> value shown last
        self.t0 = time.perf_counter()
        self.compile_at_start = compile_seconds()
        self.base = self.compile_at_start  # compile clock at the start of the timed interval
        self.ended: float | None = None  # compile clock at the end of the interval
        self.first: tuple[int, float] | None = None  # (step, time) of the first train line

    def print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream or sys.stderr, flush=True)

    def header(self, lines: Sequence[str], shown: dict[str, Any] | None = None) -> None:
        """Prints lines; shown: the slow fields' values the header states (not repeated)."""
        for line in lines:
            self.print(line)
        for key, value in (shown or {}).items():
            self.shown[("train", key)] = value

    def interval_end(self) -> None:
        """The loop's timed interval ends here (its record may be written later)."""
        self.ended = compile_seconds()

    @contextlib.contextmanager
    def untimed(self) -> Iterator[None]:
        """Work outside the intervals' timing (validation, saves): its compiling is not theirs."""
        before = compile_seconds()
        try:
            yield
        finally:
            self.base += compile_seconds() - before

    def record(self, step: int, split: str, record: dict[str, Any]) -> None:
        """One line for a metric record."""
        if not self.enabled:
            return
        now = time.perf_counter()
        parts = [f"[{split:5s}]", f"step {self._of(step, self.total_steps)}"]
        compiled = 0.0
        if split == "train":
            end = compile_seconds() if self.ended is None else self.ended
            compiled, self.base, self.ended = end - self.base, end, None
            if self.steps_per_epoch and self.epochs:
                epoch = max(math.ceil(step / self.steps_per_epoch), 1)
                parts.append(f"epoch {self._of(epoch, self.epochs)}")
            parts.append(duration(now - self.t0))
            eta = self._eta(step, now)
            if eta is not None:
                parts.append(f"eta {duration(eta)}")
        scalars = {
            k: v
            for k, v in record.items()
            if k not in HIDDEN_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
        }
        order = [k for k in FIRST_KEYS if k in scalars]
        order += [k for k in scalars if k not in order and k not in SLOW_KEYS]
        parts += [f"{k}={number(scalars[k])}" for k in order]
        if "examples_per_sec" in record:
            rate = f"examples_per_sec={number(record['examples_per_sec'])}"
            if compiled >= 0.005:
                rate += f" (incl. {compiled:.2f} s compile)"
            parts.append(rate)
        for key in SLOW_KEYS:
            if key in scalars and self.shown.get((split, key)) != scalars[key]:
                self.shown[(split, key)] = scalars[key]
                parts.append(f"{key}={number(scalars[key])}")
        self.print(" ".join(parts))

    def _of(self, value: int, total: int | None) -> str:
        return f"{value}/{total}" if total else str(value)

    def _eta(self, step: int, now: float) -> float | None:
        """Seconds left at the rate since the first train line (which excludes the first
        compilation); at the first line, the rate of its steps less the compile time."""
        if not self.total_steps:
            return None
        if self.first is None:
            self.first = (step, now)
            seconds = now - self.t0 - (compile_seconds() - self.compile_at_start)
            steps = step - self.start_step
        else:
            steps, seconds = step - self.first[0], now - self.first[1]
        if steps <= 0 or seconds <= 0:
            return None
        return (self.total_steps - step) * seconds / steps


def header_lines(
    cfg: Any,
    paths: Any,
    devices: Sequence[Any],
    data_info: dict[str, Any],
    record: dict[str, Any],
    *,
    start_step: int,
    steps_per_epoch: int,
    shown: dict[str, Any],
) -> list[str]:
    """The header of a run's console: what runs, where it writes, how long, on what."""
    platform = devices[0].platform if devices else "?"
    kinds = sorted({getattr(d, "device_kind", platform) for d in devices} - {platform})
    processes = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
    tcfg = cfg.training
    sizes = ", ".join(f"{k} {v:,}" for k, v in data_info.get("num_examples", {}).items())
    resumed = f", resumed at step {start_step}" if start_step else ""
    kl = tcfg.kl
    lines = [
        f"run {record['run_id']} (experiment {record['experiment']}, config {record['config_hash']})",
        f"  record:   {paths.run_dir}  logs: {paths.log_dir}",
        f"  devices:  {len(devices)} x {platform}"
        + (f" ({', '.join(kinds)})" if kinds else "")
        + f"{processes}, backend {cfg.parallel.backend}",
        f"  model:    {cfg.model.type}, latent_dim {cfg.model.latent_dim}, likelihood "
        f"{cfg.model.likelihood}: {record['param_count']:,} parameters "
        f"({size(record['model_bytes'])}); table in {Path(paths.log_dir) / 'params.txt'}",
        f"  data:     {data_info.get('name', cfg.data.name)} {data_info.get('image_shape')}: {sizes}",
        f"  training: {record['total_steps']:,} steps = {tcfg.epochs} epochs x "
        f"{steps_per_epoch:,} steps of batch {tcfg.batch_size}{resumed}",
        f"  loss:     train_bound {record['train_bound']}, kl beta {number(kl.beta)} warmup "
        f"{kl.warmup} free_bits {number(kl.free_bits)}; optimizer {cfg.optimizer.type}, "
        f"schedule {cfg.optimizer.schedule}",
        "  lines:    train every "
        f"{cfg.logging.every_steps} steps, val every {cfg.eval.every_steps}, checkpoint every "
        f"{cfg.checkpoint.every_steps}; shown when they change: "
        + " ".join(f"{k}={number(v)}" for k, v in shown.items()),
    ]
    return lines


def start_console(
    console: Console,
    cfg: Any,
    paths: Any,
    devices: Sequence[Any],
    data_info: dict[str, Any],
    record: dict[str, Any],
    params: Any,
    *,
    shown: dict[str, Any],
    write: bool,
) -> None:
    """Writes the parameter table to <log_dir>/params.txt (write: the writing process) and
    prints the header and the table. shown: kl_weight, lr and skipped_steps at the start."""
    from src.utils.errors import StorageError
    from src.utils.io import atomic_write_text

    table = param_table(params)
    if write:
        path = Path(paths.log_dir) / "params.txt"
        try:
            atomic_write_text(path, table)
        except OSError as e:
            raise StorageError(f"cannot write {path}: {e}") from e
    lines = header_lines(
        cfg,
        paths,
        devices,
        data_info,
        record,
        start_step=console.start_step,
        steps_per_epoch=console.steps_per_epoch or 0,
        shown=shown,
    )
    console.header([*lines, *table.rstrip("\n").split("\n")], shown)
