"""Benchmark a config: python scripts/benchmark.py --config=configs/experiment/baseline.yaml [--steps=N].

Prints the measurements as JSON and writes them to --out (see docs/performance.md).
"""

import time

STARTED = time.perf_counter()  # time to first step counts from here, imports included

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.utils.cli import run  # noqa: E402


def main(argv):
    import json

    from src.utils.cli import ArgumentParser, split_overrides
    from src.utils.config import load_config
    from src.utils.errors import ConfigError
    from src.utils.io import atomic_write_json

    rest, overrides = split_overrides(argv)
    parser = ArgumentParser(prog="benchmark.py", description="Measure training speed of a config.")
    parser.add_argument("--config", help="experiment YAML, e.g. configs/experiment/baseline.yaml")
    parser.add_argument("--model", help="model group file to use instead of the experiment's")
    parser.add_argument("--data", help="data group file to use instead of the experiment's")
    parser.add_argument("--steps", type=int, default=300, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; medians are reported")
    parser.add_argument("--matmul_size", type=int, default=2048, help="n of the n x n ceiling")
    parser.add_argument(
        "--iwae_images", type=int, default=0, help="also time IWAE on this many test images"
    )
    parser.add_argument("--out", default="results/benchmark.json", help="JSON file to write")
    args = parser.parse_args(rest)
    if not args.config:
        raise ConfigError("--config is required, e.g. --config=configs/experiment/baseline.yaml")
    for name in ("steps", "repeats", "matmul_size"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.iwae_images < 0:
        raise ConfigError(f"--iwae_images must be >= 0, got {args.iwae_images}")
    cfg = load_config(args.config, {"model": args.model, "data": args.data}, overrides)
    from src.utils.reproducibility import configure_determinism

    configure_determinism(cfg.compile.deterministic_gpu)  # before JAX starts a backend

    from src.training.device.compilation import enable_cache

    enable_cache(cfg.compile)  # before the first compilation
    from src.experiments.benchmark import run_benchmark

    result = run_benchmark(
        cfg, args.steps, args.repeats, args.matmul_size, args.iwae_images, STARTED
    )
    result["command"] = [sys.executable, *sys.argv]
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))
    ref = result["reference"]
    print(
        f"project step {result['examples_per_s']:,.0f} examples/s, reference (plain Flax) step "
        f"{ref['examples_per_s']:,.0f} examples/s: ratio {ref['bare_over_reference']:.3f}; "
        f"the loop (steps_per_call {result['steps_per_call']}) "
        f"{result['loop']['examples_per_s']:,.0f} examples/s: "
        f"ratio {result['loop']['over_reference']:.3f}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
