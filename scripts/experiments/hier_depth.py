"""Time to the first train step of a hierarchical model against its depth.

python scripts/experiments/hier_depth.py [--depths=8,32] [--body=mlp] [KEY=VALUE ...]

A measurement harness for docs/performance.md, not part of the package. For each depth n it
builds configs/experiment/baseline.yaml with model.type=hierarchical, top_down and one stage of
n identical groups (plus the KEY=VALUE overrides), then times, in a fresh process per depth (so
no compilation is shared): building the model, compiling and running the first train step, and
the median of 20 later steps. Stacks of identical blocks run as one lax.scan, so the compile
time should hardly grow with n.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def measure(depth: int, body: str, overrides: list[str]) -> dict[str, float]:
    """Runs in this process: the timings of one depth."""
    sys.path.insert(0, str(REPO))
    import jax

    from src.data.pipeline import load_splits
    from src.training.device.parallel import make_mesh
    from src.training.setup import build_state, build_train_step
    from src.utils.config import load_config

    cfg = load_config(
        REPO / "configs" / "experiment" / "baseline.yaml",
        {"model": "hierarchical"},
        [
            "model.hierarchical.structure=top_down",
            f"model.hierarchical.body={body}",
            f"model.hierarchical.groups=[{depth}]",
            "model.hierarchical.group_dims=[4]",
            "model.hierarchical.widths=[32]",
            "model.hierarchical.conv.downsample=[2]",
            *overrides,
        ],
    )
    tic = time.perf_counter()
    splits = load_splits(cfg.data)
    shape = splits.train.shape[1:]
    graphdef, tx, schedule, state = build_state(cfg, shape, 1000, jax.random.key(0))
    mesh = make_mesh(jax.devices()[:1])
    step = build_train_step(cfg, graphdef, tx, schedule, mesh, image_shape=shape)
    batch = jax.device_put(splits.train[: cfg.training.batch_size])
    built = time.perf_counter()
    state, metrics = step(state, batch, jax.random.key(0), True)
    jax.block_until_ready(metrics)
    first = time.perf_counter()
    times = []
    for i in range(20):
        t = time.perf_counter()
        state, metrics = step(state, batch, jax.random.key(i + 1), True)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    return {
        "depth": depth,
        "build_s": built - tic,
        "first_step_s": first - built,
        "step_ms": 1000 * statistics.median(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="8,32")
    parser.add_argument("--body", default="mlp", choices=("mlp", "conv"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the per-depth child
    args, overrides = parser.parse_known_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.body, overrides)))
        return
    rows = []
    for depth in map(int, args.depths.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, f"--one={depth}", f"--body={args.body}", *overrides],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"body {args.body}: depth | build s | first step (compile + run) s | later step ms")
    for r in rows:
        print(
            f"{r['depth']:5d} | {r['build_s']:7.2f} | {r['first_step_s']:8.2f} | {r['step_ms']:8.2f}"
        )
    ratio = rows[-1]["first_step_s"] / rows[0]["first_step_s"]
    print(f"first step at depth {rows[-1]['depth']} / depth {rows[0]['depth']}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
