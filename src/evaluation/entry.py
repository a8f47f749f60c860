"""The evaluate command: flags -> evaluate_run -> one summary line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from src.utils.cli import ArgumentParser, overrides_help, split_overrides
from src.utils.config import CONFIG_ROOT, read_yaml


def parse_args(argv: Sequence[str]):
    rest, overrides = split_overrides(argv)
    parser = ArgumentParser(
        prog="evaluate.py",
        usage="%(prog)s --run_dir=DIR [--checkpoint=best|last] [--split=test|val|train]\n"
        "                   [--config.eval.KEY=VALUE ...]",
        description="Evaluate a saved run (IWAE, KL per dim, MI, figures) with the run's own "
        "config.yaml; writes <run_dir>/eval/<checkpoint>_<split>.json and figures.",
        epilog=overrides_help(
            "an eval.* key (the rest of the config is the run's)",
            ["--config.eval.iwae_samples=5000 --config.eval.figures=false"],
            listing="Keys: " + ", ".join(read_yaml(CONFIG_ROOT / "default.yaml")["eval"]) + ".",
            form="--config.eval.KEY=VALUE",
        ),
    )
    parser.add_argument(
        "--run_dir",
        metavar="DIR",
        required=True,
        help="the run folder, e.g. results/checkpoints/<run_id>",
    )
    parser.add_argument(
        "--checkpoint",
        default="best",
        choices=("best", "last"),
        help="model_best (default) or model_last",
    )
    parser.add_argument(
        "--split", default="test", choices=("test", "val", "train"), help="default: test"
    )
    args = parser.parse_args(rest)
    return args, overrides


def main(argv: Sequence[str]) -> int:
    args, overrides = parse_args(argv)
    from src.evaluation.evaluate import evaluate_run

    record, written = evaluate_run(Path(args.run_dir), args.checkpoint, args.split, overrides)
    print(
        f"{record['run_id']} {args.checkpoint}@{record['step']} {args.split} "
        f"(n={record['num_examples']}): elbo={record['elbo']:.4f} "
        f"iwae_nll(k={record['iwae_samples']})={record['iwae_nll']:.4f} "
        f"bits/dim={record['bits_per_dim']:.4f} kl={record['kl']:.4f} "
        f"active={record['active_units']} "
        + (
            f"mi={record['mutual_info']:.4f} "
            if "mutual_info" in record
            else f"kl_per_group={[round(v, 3) for v in record['kl_per_group']]} "
            f"active_per_group={record['active_units_per_group']} "
        )
        + f"in {record['seconds']:.1f}s; wrote {written[0]}"
        + (f" and {len(written) - 1} figures in {written[1].parent}" if len(written) > 1 else "")
    )
    return 0
