"""The commands of evaluation: evaluate (scripts/evaluate.py: flags -> evaluate_run -> one
summary line) and analyze (scripts/analyze.py: the analysis notebook run headless on a run).

Nothing here imports JAX at the top: --help and a mistake in the flags take no time."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from src.evaluation.notebook import NOTEBOOK, RUN_DIR_ENV, pick_run
from src.utils.cli import ArgumentParser, overrides_help, split_overrides
from src.utils.config import CONFIG_ROOT, read_yaml
from src.utils.errors import StorageError


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


def evaluate_main(argv: Sequence[str]) -> int:
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


def _cell_error(nb: Any) -> str:
    """'cell N: Name: value' of the first error output of an executed notebook ('' if none)."""
    for number, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"cell {number}: {output['ename']}: {output['evalue']}"
    return ""


def _notebook_warnings(nb: Any) -> list[str]:
    """The 'warning: ...' lines the notebook printed, to repeat on the console."""
    lines = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                lines += [ln for ln in output["text"].splitlines() if ln.startswith("warning:")]
    return lines


def analyze_main(argv: Sequence[str]) -> int:
    parser = ArgumentParser(
        prog="analyze.py",
        description="Execute notebooks/analysis.ipynb headless on a saved run and write its "
        "figures: <workdir>/figures/<run_id>/analysis.html (figures embedded) and analysis.ipynb "
        "(executed). The notebook never trains.",
    )
    parser.add_argument(
        "--run_dir",
        metavar="DIR",
        help=f"the run folder, <workdir>/checkpoints/<run_id> (default: ${RUN_DIR_ENV}, else the "
        "newest run under --workdir)",
    )
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        default="results",
        help="where to look for the newest run without --run_dir (default: results)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder of analysis.html and analysis.ipynb (default: <workdir>/figures/<run_id>, "
        "the workdir being the run folder's grandparent)",
    )
    parser.add_argument(
        "--timeout", type=int, default=600, help="seconds allowed per notebook cell (default: 600)"
    )
    args = parser.parse_args(argv)

    run_dir = pick_run(args.run_dir, args.workdir)
    out = Path(args.out) if args.out else run_dir.parent.parent / "figures" / run_dir.name
    print(f"analysing {run_dir} with {NOTEBOOK.name} ...", file=sys.stderr, flush=True)

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    nb = nbformat.read(NOTEBOOK, as_version=4)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # the kernel inherits the environment
    client = NotebookClient(
        nb,
        timeout=args.timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parents[1])}},
        # The kernel's own log (e.g. its warning about TCP without encryption) is not the
        # analysis; its errors still show.
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    failed = ""
    try:
        client.execute()
    except CellExecutionError:
        failed = _cell_error(nb) or "a cell failed"
    except DeadKernelError as e:
        failed = f"the kernel died ({e})"
    try:
        out.mkdir(parents=True, exist_ok=True)
        notebook_path = out / "analysis.ipynb"
        nbformat.write(nb, notebook_path)
        written = [notebook_path]
        try:
            from nbconvert import HTMLExporter
        except ImportError:
            print(
                "note: no HTML without nbconvert (pip install -e '.[dev]')",
                file=sys.stderr,
            )
        else:
            html, _ = HTMLExporter().from_notebook_node(nb)
            (out / "analysis.html").write_text(html, encoding="utf-8")
            written.insert(0, out / "analysis.html")
    except OSError as e:
        raise StorageError(f"cannot write the analysis of {run_dir} to {out}: {e}") from e
    for line in _notebook_warnings(nb):
        print(line, file=sys.stderr)
    if failed:
        print(f"error: {NOTEBOOK.name} {failed}; see {notebook_path}", file=sys.stderr)
        return 1
    print(f"{run_dir.name}: wrote {' and '.join(str(p) for p in written)}")
    return 0
