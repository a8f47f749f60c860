"""What each part of the project's train step costs: the step timed with one part taken out.

python scripts/experiments/step_parts.py CONFIG [--steps=N] [--repeats=R] [KEY=VALUE ...]

A measurement harness for docs/performance.md, not part of the package. Builds the step of
CONFIG as the loop does (src/training/setup.py) once as it is and once per variant with one
part replaced, then times every variant and the plain reference step
(src/experiments/benchmark.py:reference_step) alternately, `--steps` back-to-back calls on one
resident batch per timing. Prints the median steps/s of each and, for a variant, the share of
the full step's time that the removed part costs: 1 - (variant's ms/step) / (full step's).
The variants (each changes the numbers; they exist only to be timed):

- no_guard: the optimizer update applied without the finiteness test (apply_if_finite);
- no_grad_norm: grad_norm a constant instead of the gradient's global norm;
- fixed_noise: the data and reparameterization noise drawn once, outside the step (no
  dynamic binarization or normal draws per step).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import src.training.step as step_module  # noqa: E402
from src.experiments.benchmark import alternate, reference_step, step_timer  # noqa: E402
from src.training.setup import setup  # noqa: E402
from src.utils.config import load_config  # noqa: E402


def unguarded(tx, state, grads, metrics, nan_policy, active):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics["nonfinite"] = jnp.float32(0)
    params = optax.apply_updates(state.params, updates)
    return step_module.TrainState(state.step + 1, params, opt_state), metrics


def fixed_noise(key, x, latent_dim, dynamic_binarize, samples):
    shape = (x.shape[0], latent_dim) if samples == 1 else (x.shape[0], samples, latent_dim)
    return x, jnp.zeros(shape, x.dtype)


@contextmanager
def replaced(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def timer(cfg: Any, steps: int) -> Callable[[], float]:
    """The step of cfg as it is built now, compiled; returns time_steps() -> steps/s."""
    run = setup(cfg)
    keys = [jax.random.fold_in(run.keys["train"], s) for s in range(steps)]

    def step(state: Any, batch: jax.Array, key: jax.Array) -> tuple:
        return run.train_step(state, batch, key, True)

    return step_timer(step, run.state, run.batches(0), keys)[0]  # compiles under the replacement


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args, overrides = parser.parse_known_args()
    cfg = load_config(args.config, None, overrides)
    timers = {"step": timer(cfg, args.steps)}
    with replaced(step_module, "apply_if_finite", unguarded):
        timers["no_guard"] = timer(cfg, args.steps)
    with replaced(optax.tree, "norm", lambda tree: jnp.float32(1.0)):
        timers["no_grad_norm"] = timer(cfg, args.steps)
    with replaced(step_module, "draw_noise", fixed_noise):
        timers["fixed_noise"] = timer(cfg, args.steps)
    timers["reference"] = reference_step(cfg, args.steps)
    runs = alternate(timers, args.repeats)
    full = statistics.median(runs["step"])
    print(f"{'variant':14s} {'steps/s':>8s} {'ms/step':>8s} {'share':>8s}  single runs")
    for name, rates in runs.items():
        rate = statistics.median(rates)
        share = "" if name in ("step", "reference") else f"{1 - full / rate:.1%}"
        singles = " ".join(f"{r:.0f}" for r in rates)
        print(f"{name:14s} {rate:8.1f} {1e3 / rate:8.3f} {share:>8s}  {singles}")
    print(f"step / reference: {full / statistics.median(runs['reference']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
