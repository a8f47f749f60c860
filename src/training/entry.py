"""The train command: flags -> resolved config -> run directory -> train_and_evaluate."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import Any

from src.training.run.rundir import (
    Replacement,
    RunPaths,
    default_run_id,
    lock_run,
    prepare,
    run_paths,
)
from src.training.run.signals import CommandGuard, Interrupted
from src.utils.cli import (
    NONFINITE_STATUS,
    USER_ERROR_STATUS,
    ArgumentParser,
    interrupted_status,
    overrides_help,
    split_overrides,
)
from src.utils.config import (
    CONFIG_ROOT,
    changed_keys,
    load_config,
    load_saved_config,
    read_yaml,
)
from src.utils.errors import ConfigError, RunDirError, RunError, UserError
from src.utils.io import guarded_console, read_json
from src.utils.reproducibility import configure_determinism

# Keys that may differ when resuming: they change how long the run is, where it runs (the
# checkpoint does not depend on the device count) or how fast, not what it computes.
RESUMABLE_OVERRIDES = {
    "training.epochs",
    "training.steps_per_call",
    "compile.cache_dir",
    "compile.min_compile_secs",
    "parallel.backend",
    "parallel.num_devices",
    "parallel.distributed",
    "parallel.coordinator_address",
    "parallel.num_processes",
    "parallel.process_id",
    "profile.enabled",
    "profile.start_step",
    "profile.num_steps",
}


def _group_names(group: str) -> str:
    """'conv | mlp | transformer': the files of configs/<group>/, for --help."""
    return " | ".join(sorted(p.stem for p in (CONFIG_ROOT / group).glob("*.yaml")))


TRAIN_EXAMPLES = """\
examples:
  python scripts/train.py --config=configs/experiment/baseline.yaml
  python scripts/train.py --config=configs/experiment/baseline.yaml --model=conv \\
      --config.training.epochs=5 --config.training.kl.warmup=cyclical
  python scripts/train.py --workdir=results --run_id=ID --resume [--config.training.epochs=N]

A mistake in the input (unknown key, wrong type, missing file, existing run id) prints one
line and exits with status 2. Exit statuses and the run's files: README.md."""


def parse_args(argv: Sequence[str]):
    rest, overrides = split_overrides(argv)
    parser = ArgumentParser(
        prog="train.py",
        usage="%(prog)s --config=FILE [--model=NAME] [--data=NAME] [--config.SECTION.KEY=VALUE ...]\n"
        "                [--workdir=DIR] [--run_id=ID] [--overwrite] [--dry_run]\n"
        "       %(prog)s --run_id=ID --resume [--workdir=DIR] [--config.training.epochs=N]",
        description="Train a VAE from a YAML config.",
        epilog=overrides_help(
            "any config key",
            [
                "--config.training.lr=3e-4 --config.model.latent_dim=32",
                "--config.model.hidden_dims=[512,256] --config.training.kl.free_bits=0.25",
            ],
            listing="Sections: " + ", ".join(read_yaml(CONFIG_ROOT / "default.yaml")) + ".",
        )
        + "\n\n"
        + TRAIN_EXAMPLES,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="experiment YAML, e.g. configs/experiment/baseline.yaml; it composes "
        "configs/default.yaml and the group files it names (required unless --resume)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help=f"use configs/model/NAME.yaml instead of the experiment's model: {_group_names('model')}",
    )
    parser.add_argument(
        "--data",
        metavar="NAME",
        help=f"use configs/data/NAME.yaml instead of the experiment's data: {_group_names('data')}",
    )
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        default="results",
        help="root of checkpoints/, logs/, figures/ (default: results)",
    )
    parser.add_argument(
        "--run_id", metavar="ID", help="run folder name (default: experiment name + timestamp)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue --run_id from its last checkpoint with its saved config.yaml",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --run_id (otherwise refused)"
    )
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="check the config and print the parameters, FLOPs and memory per step, the steps "
        "and the data of the run; trains and writes nothing",
    )
    args = parser.parse_args(rest)
    return args, overrides


def resume_config(args: Any, overrides: list[str], paths: RunPaths) -> Any:
    """The config a resumed run continues with: its config.yaml, planned length possibly changed.

    --config/--model/--data and --config.* overrides may be repeated from the original command;
    anything they change other than RESUMABLE_OVERRIDES is refused. A new training.epochs is
    refused with a warmup_cosine schedule, whose decay horizon is the planned length: the steps
    already taken would belong to a different schedule than the one the record would claim.
    """
    saved = load_saved_config(paths.config)
    if args.config:
        requested = load_config(args.config, {"model": args.model, "data": args.data}, overrides)
    else:
        requested = load_saved_config(paths.config, overrides)
    changed = changed_keys(saved, requested)
    refused = {k: v for k, v in changed.items() if k not in RESUMABLE_OVERRIDES}
    if refused:
        shown = ", ".join(f"{k} (saved {a!r}, asked {b!r})" for k, (a, b) in refused.items())
        raise ConfigError(
            f"--resume: {shown} differ from {paths.config}; a resumed run keeps its saved config "
            f"and only {', '.join(sorted(RESUMABLE_OVERRIDES))} may change (drop --config to use "
            "the saved one)"
        )
    if "training.epochs" in changed and saved.optimizer.schedule != "constant":
        raise ConfigError(
            f"--resume: training.epochs cannot change with optimizer.schedule="
            f"{saved.optimizer.schedule}, whose decay horizon is the planned length; resume with "
            f"training.epochs={saved.training.epochs} or start a new run"
        )
    return requested


def completed_message(paths: RunPaths, cfg: Any) -> str | None:
    """The line --resume prints for a run that has completed and is not asked to go on.

    A completed run is resumed only to train longer (a raised training.epochs); otherwise its
    record is left alone: no runs.csv rows, no new TensorBoard events, metrics.json as it is.
    """
    if not paths.metrics.is_file():
        return None
    record = read_json(paths.metrics)
    epochs = load_saved_config(paths.config).training.epochs
    if record.get("status") != "completed" or cfg.training.epochs != epochs:
        return None
    best = record.get("best")
    shown = (
        f"best val {best['metric']}={best['value']:.4f} at step {best['step']}; " if best else ""
    )
    return (
        f"run {paths.run_dir.name}: already completed ({record.get('total_steps')} steps, "
        f"{epochs} epochs); {shown}nothing to resume, record unchanged in {paths.run_dir} "
        f"(to train longer: --resume --config.training.epochs=N with N > {epochs})"
    )


def exit_status(e: BaseException) -> int:
    """The status src.utils.cli.run gives the command for e (a bug's traceback: 1)."""
    if isinstance(e, UserError):
        return USER_ERROR_STATUS
    if isinstance(e, RunError):
        return e.exit_status
    if isinstance(e, KeyboardInterrupt):
        return interrupted_status(signal.SIGINT)
    return 1


def writes_run_folder(parallel: Any) -> bool:
    """Whether this process prepares and locks the run folder: process 0 of a multi-process run.

    Decided from the config and the cluster environment, before jax.distributed starts: process
    0 prepares the folder before it joins the others, so none of them can touch it earlier.
    """
    if parallel.distributed == "false":
        return True
    if parallel.process_id >= 0:
        return bool(parallel.process_id == 0)
    from src.training.device.parallel import (
        detected_cluster,  # imports JAX: not for every command line
    )

    env = detected_cluster()
    return env is None or bool(env.get_process_id() == 0)


def main(argv: Sequence[str]) -> int:
    """The train command; a closed stdout or stderr (`| head`, a closed terminal) is ignored.

    Signals (src/utils/signals.py): before training starts, SIGTERM/SIGINT/SIGHUP stop the
    command at once (an --overwrite'n run is restored); during training they stop it gracefully;
    after it, the exit status follows the record. Run as the script (argv is the process's own),
    the handlers stay installed until the process has ended.
    """
    script = list(argv) == sys.argv[1:]
    with guarded_console(), CommandGuard(keep=script) as guard:
        try:
            return guard.finish(_main(argv))
        except Interrupted as e:
            print(
                f"{e}: stopped before training started; nothing was trained (a run being "
                "replaced by --overwrite is kept)",
                file=sys.stderr,
            )
            return guard.finish(interrupted_status(e.signum))
        except BaseException as e:
            guard.finish(exit_status(e))
            raise


def locate_run(args: Any, overrides: list[str]) -> tuple[Any, RunPaths, bool]:
    """The new run's config (None when resuming: resume_config reads it from the run folder
    later), the run's paths, and whether this process writes the run folder."""
    if args.resume:
        if not args.run_id:
            raise ConfigError("--resume needs --run_id (the run to continue)")
        if args.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other; pass one of them")
        paths = run_paths(args.workdir, args.run_id)
        saved = paths.config.is_file()
        writer = not saved or writes_run_folder(load_saved_config(paths.config, overrides).parallel)
        return None, paths, writer
    if not args.config:
        raise ConfigError("--config is required, e.g. --config=configs/experiment/baseline.yaml")
    cfg = load_config(args.config, {"model": args.model, "data": args.data}, overrides)
    paths = run_paths(args.workdir, args.run_id or default_run_id(cfg.experiment.name))
    return cfg, paths, writes_run_folder(cfg.parallel)


def _main(argv: Sequence[str]) -> int:
    args, overrides = parse_args(argv)
    cfg, paths, writer = locate_run(args, overrides)
    if args.dry_run:  # nothing is locked, prepared or written
        if args.resume:
            if not paths.config.is_file():
                raise RunDirError(f"--resume: no run to resume at {paths.run_dir} (no config.yaml)")
            cfg = resume_config(args, overrides, paths)
        configure_determinism(cfg.compile.deterministic_gpu)  # the program a run compiles
        from src.training.dry_run import dry_run

        print(dry_run(cfg, paths, resume=args.resume))
        return 0
    replacement = Replacement([])
    # One writer per run folder: the lock is taken before anything is written and held until
    # the process ends. Other processes of a multi-process run only read the folder.
    lock = lock_run(paths) if writer else None
    try:
        if writer:
            replacement = prepare(paths, resume=args.resume, overwrite=args.overwrite)
        elif args.resume and not paths.config.is_file():
            raise RunDirError(f"--resume: no run to resume at {paths.run_dir} (no config.yaml)")
        try:
            if args.resume:
                cfg = resume_config(args, overrides, paths)
                done = completed_message(paths, cfg)
                if done is not None:
                    print(done)
                    return 0

            configure_determinism(cfg.compile.deterministic_gpu)  # before JAX starts a backend
            from src.training.device.compilation import enable_cache
            from src.training.loop import train_and_evaluate

            enable_cache(cfg.compile)  # before the first compilation

            # An --overwrite'n run is deleted once the new one has passed its checks and starts.
            record = train_and_evaluate(cfg, paths, resume=args.resume, on_start=replacement.commit)
        except BaseException:
            replacement.restore()  # the new run did not start: the old one comes back
            raise
    finally:
        if lock is not None:
            lock.release()
    return report_end(record, paths, args.workdir)


def report_end(record: dict[str, Any], paths: RunPaths, workdir: str) -> int:
    """Prints how the run ended (stderr unless it completed) and returns the exit status."""
    run = paths.run_dir.name
    if record["status"] == "interrupted":
        step, name = record["stopped_at_step"], record["signal"]
        print(
            f"run {run}: interrupted by {name} at step {step}, model_last saved; resume with: "
            f"python scripts/train.py --workdir={workdir} --run_id={run} --resume",
            file=sys.stderr,
        )
        return interrupted_status(getattr(signal, name))
    if record["status"] == "failed":
        failure = record["failure"]
        if "loss" in failure:  # a non-finite step under nan_policy stop
            detail = (
                f" (loss={failure['loss']}, grad_norm={failure['grad_norm']}); model_last holds "
                f"step {record['stopped_at_step']}; training.nan_policy=skip drops such steps "
                "instead"
            )
        else:  # diverged: too many skipped steps, or a non-finite validation
            detail = f"; model_last holds step {record['stopped_at_step']}"
        print(
            f"run {run}: failed: {failure['reason']} at step {failure['step']}{detail}",
            file=sys.stderr,
        )
        return NONFINITE_STATUS
    best = record["best"]
    shown = (
        f"best val {best['metric']}={best['value']:.4f} at step {best['step']}"
        if best
        else "no finite val"
    )
    print(f"run {run}: {record['status']}; {shown}; record in {paths.run_dir}")
    return 0
