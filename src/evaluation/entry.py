"""The evaluate command: flags -> evaluate_run -> one summary line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from src.utils.cli import ArgumentParser, split_overrides


def parse_args(argv: Sequence[str]):
    rest, overrides = split_overrides(argv)
    parser = ArgumentParser(
        prog="evaluate.py", description="Evaluate a saved run (IWAE, KL per dim, MI, figures)."
    )
    parser.add_argument(
        "--run_dir", required=True, help="the run folder, e.g. results/checkpoints/<run_id>"
    )
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--split", default="test", choices=("test", "val", "train"))
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
        f"active={record['active_units']} mi={record['mutual_info']:.4f} "
        f"in {record['seconds']:.1f}s; wrote {written[0]}"
        + (f" and {len(written) - 1} figures in {written[1].parent}" if len(written) > 1 else "")
    )
    return 0
