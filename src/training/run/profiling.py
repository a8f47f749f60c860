"""profile.*: a JAX profiler trace of a window of training steps, in the run's log folder.

With `profile.enabled: true` the loop traces from the first compiled call that starts at or
after step `profile.start_step` until `profile.num_steps` steps later (the window snaps to the
calls: with training.steps_per_call K > 1 a call of K steps is traced whole). The trace is
written by jax.profiler into `<workdir>/logs/<run_id>/plugins/profile/<time>/`:
`*.xplane.pb` for TensorBoard's Profile tab (`pip install tensorboard-plugin-profile`, then
`tensorboard --logdir <workdir>/logs`) and `perfetto_trace.json.gz` for https://ui.perfetto.dev.
Ending the trace waits for the traced steps to finish, once; the numbers do not change, but the
interval holding the window is slower (its examples_per_sec says so). Only the writing process
(process 0) traces.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax


class StepProfiler:
    """Starts and stops the trace around the loop's calls (see the module docstring)."""

    def __init__(self, cfg: Any, log_dir: Path, write: bool):
        self.enabled = bool(cfg.enabled) and write
        self.start, self.stop = cfg.start_step, cfg.start_step + cfg.num_steps
        self.log_dir = Path(log_dir)
        self.active = False

    def before(self, step: int) -> None:
        """Before the call whose first step is `step`."""
        if self.enabled and not self.active and self.start <= step < self.stop:
            jax.profiler.start_trace(str(self.log_dir), create_perfetto_trace=True)
            self.active = True

    def after(self, step: int, outputs: Any) -> None:
        """After a call: `step` is the next step to run; outputs are the call's results."""
        if self.active and step >= self.stop:
            self.close(outputs)

    def close(self, outputs: Any = None) -> None:
        """Ends the trace (if one runs) once outputs are computed; the window is done."""
        if self.active:
            self.active = self.enabled = False
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            print(
                f"profile: trace of steps from {self.start} in {self.log_dir / 'plugins' / 'profile'}",
                file=sys.stderr,
                flush=True,
            )
