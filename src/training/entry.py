"""The train command: flags -> resolved config -> run directory -> train_and_evaluate."""

from __future__ import annotations

from collections.abc import Sequence

from src.utils.cli import ArgumentParser, split_overrides
from src.utils.config import load_config, load_saved_config, parse_override
from src.utils.errors import ConfigError
from src.utils.rundir import default_run_id, prepare, run_paths

# Keys that may differ when resuming: they change how long the run is, not what it computes.
RESUMABLE_OVERRIDES = {"training.epochs"}


def parse_args(argv: Sequence[str]):
    rest, overrides = split_overrides(argv)
    parser = ArgumentParser(prog="train.py", description="Train a VAE from a YAML config.")
    parser.add_argument("--config", help="experiment YAML, e.g. configs/experiment/baseline.yaml")
    parser.add_argument("--model", help="model group file to use instead of the experiment's")
    parser.add_argument("--data", help="data group file to use instead of the experiment's")
    parser.add_argument(
        "--workdir", default="results", help="root of checkpoints/, logs/, figures/"
    )
    parser.add_argument("--run_id", help="run folder name (default: experiment name + timestamp)")
    parser.add_argument("--resume", action="store_true", help="continue --run_id from model_last")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --run_id")
    args = parser.parse_args(rest)
    return args, overrides


def main(argv: Sequence[str]) -> int:
    args, overrides = parse_args(argv)
    if args.resume:
        if not args.run_id:
            raise ConfigError("--resume needs --run_id (the run to continue)")
        paths = run_paths(args.workdir, args.run_id)
        prepare(paths, resume=True, overwrite=False)
        for key, _ in map(parse_override, overrides):
            if key not in RESUMABLE_OVERRIDES:
                raise ConfigError(
                    f"--config.{key}: a resumed run keeps its saved config; only "
                    f"{', '.join(sorted(RESUMABLE_OVERRIDES))} may change"
                )
        cfg = load_saved_config(paths.config, overrides)
    else:
        if not args.config:
            raise ConfigError(
                "--config is required, e.g. --config=configs/experiment/baseline.yaml"
            )
        cfg = load_config(args.config, {"model": args.model, "data": args.data}, overrides)
        paths = run_paths(args.workdir, args.run_id or default_run_id(cfg.experiment.name))
        prepare(paths, resume=False, overwrite=args.overwrite)

    from src.training.loop import train_and_evaluate

    record = train_and_evaluate(cfg, paths, resume=args.resume)
    best = record["best"]
    print(
        f"run {paths.run_dir.name}: {record['status']}; best val {best['metric']}={best['value']:.4f} "
        f"at step {best['step']}; record in {paths.run_dir}"
    )
    return 0
