"""The analysis notebook's helpers and the command that runs it (scripts/analyze.py).

notebooks/analysis.ipynb reads a saved run; which one: LATENT_VAE_RUN_DIR, else the newest run
under results/checkpoints (`pick_run`). `python scripts/analyze.py [--run_dir=DIR]` executes
the notebook headless on that run and writes `<workdir>/figures/<run_id>/analysis.html` (the
figures embedded) and `analysis.ipynb` (executed). Nothing here imports JAX: picking a run and
reporting a mistake take no time.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from src.training.run import identity
from src.utils.cli import ArgumentParser
from src.utils.errors import RunDirError, StorageError

RUN_DIR_ENV = "LATENT_VAE_RUN_DIR"
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "analysis.ipynb"
# How to make a run to analyse, for the message when there is none.
MAKE_A_RUN = "python scripts/train.py --config=configs/experiment/baseline.yaml"


def run_folders(workdir: Path) -> list[Path]:
    """The run folders of workdir/checkpoints that have a metrics.json, newest first (by the time
    metrics.json was last written). Hidden folders (runs set aside by --overwrite) are left out."""
    root = workdir / "checkpoints"
    if not root.is_dir():
        return []
    runs = [
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "metrics.json").is_file()
    ]
    return sorted(runs, key=lambda p: ((p / "metrics.json").stat().st_mtime_ns, p.name))[::-1]


def pick_run(run_dir: str | Path | None = None, workdir: str | Path = "results") -> Path:
    """The run to analyse: run_dir if given, else LATENT_VAE_RUN_DIR, else the newest run under
    workdir/checkpoints. A RunDirError (one line saying what to pass) when there is none."""
    chosen = run_dir or os.environ.get(RUN_DIR_ENV)
    if chosen:
        path = Path(chosen).resolve()
        if not (path / "metrics.json").is_file():
            raise RunDirError(
                f"{path}: no metrics.json; pass a run folder, <workdir>/checkpoints/<run_id>"
            )
        return path
    runs = run_folders(Path(workdir))
    if not runs:
        raise RunDirError(
            f"no run under {Path(workdir) / 'checkpoints'}: pass --run_dir=<workdir>/checkpoints/"
            f"<run_id> (or set {RUN_DIR_ENV}) or train one first ({MAKE_A_RUN})"
        )
    return runs[0].resolve()


def checkpoint_step(run_dir: Path, name: str) -> int | None:
    """The newest complete step of model_<name> (its numbered folders), None without one."""
    folder = run_dir / f"model_{name}"
    steps = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(steps) if steps else None


def read_evals(run_dir: Path) -> dict[str, dict[str, Any]]:
    """eval/<checkpoint>_<split>.json records of scripts/evaluate.py, by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "eval").glob("*.json"))}


def stale_evals(run_dir: Path, evals: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One warning per eval record that is not of this run (its run identity differs from
    provenance.json's: the run was replaced) or not of its checkpoint's current step (after a resume,
    model_best or model_last moved on): its numbers are not those of what the notebook restores."""
    warnings = []
    try:
        run = identity.read(run_dir).run
    except StorageError:  # no readable provenance.json: only the steps can be compared
        run = None
    for name, record in evals.items():
        checkpoint = record.get("checkpoint", name.split("_")[0])
        step = checkpoint_step(run_dir, checkpoint)
        if run is not None and record.get("run") != run:
            warnings.append(
                f"warning: eval/{name}.json was not written for this run (its identity "
                f"{record.get('run')}, the run's {run}: replaced by --overwrite since?); re-run "
                f"python scripts/evaluate.py --run_dir={run_dir} --checkpoint={checkpoint} "
                f"--split={record.get('split')}"
            )
        elif step is not None and record.get("step") != step:
            warnings.append(
                f"warning: eval/{name}.json is of step {record.get('step')} but model_{checkpoint} "
                f"is now at step {step} (resumed since?); re-run python scripts/evaluate.py "
                f"--run_dir={run_dir} --checkpoint={checkpoint} --split={record.get('split')}"
            )
    return warnings


def kl_bars(ax: Any, record: Mapping[str, Any]) -> None:
    """KL per latent dimension of an eval record as bars in dimension order, labelled by the
    dimension's index; active units (Cov_x(E_q[z_d|x]) above the threshold) dark."""
    kl = list(record["kl_per_dim"])
    variance = record.get("posterior_mean_var")
    threshold = record.get("active_threshold")
    if variance is not None and threshold is not None:
        colors = ["tab:blue" if v > threshold else "lightgray" for v in variance]
    else:
        colors = ["tab:blue"] * len(kl)
    index = list(range(len(kl)))
    ax.bar(index, kl, color=colors)
    ax.set_xticks(index, [str(d) for d in index], fontsize=7 if len(kl) > 32 else None)
    ax.set_xlabel("latent dimension (index)")
    ax.set_ylabel("KL(q(z_d|x) || p(z_d)) [nats]")
    active = record.get("active_units")
    ax.set_title(f"KL per dimension; {active} of {len(kl)} active (dark)")


# --- The command.


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
