"""Hardening III (issue 29): every file of a run belongs to that run, and no mistake deletes a
finished one. Each test fails on 4bbfa3c. Runs use the tiny baseline (tests/helpers.py TINY)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from src.training.run.rundir import lock_run, prepare, run_paths
from src.utils.errors import ConfigError, RunDirError, StorageError
from src.utils.io import read_json
from tests import test_hardening
from tests.helpers import read_state
from tests.test_hardening import assert_files, cli_args, fake_run, leftovers, resume

# The fixtures of tests/test_hardening.py: a run stopped by SIGTERM at step 30.
default_handlers = test_hardening.default_handlers
stopped_run = test_hardening.stopped_run


def evaluate(run_dir: Path, *extra: str) -> Any:
    from src.evaluation.evaluate import evaluate_run

    overrides = ["eval.iwae_samples=2", "eval.mi_samples=2", "eval.figures=false", *extra]
    return evaluate_run(run_dir, "best", "val", overrides)


def edit_yaml(path: Path, section: str, key: str, value: Any) -> None:
    import yaml

    data = yaml.safe_load(path.read_text())
    node = data
    for part in section.split("."):
        node = node[part]
    node[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# --- 1. A misspelt metric name is refused before anything is touched.


def test_a_misspelt_best_metric_is_refused_before_the_old_run_is_touched(tmp_path):
    from src.training.cli import train_main as main

    files = fake_run(tmp_path, "keep")
    with pytest.raises(ConfigError, match="checkpoint.best_metric: 'elob' is not one of elbo"):
        main(cli_args(tmp_path, "keep", "--overwrite", "--config.checkpoint.best_metric=elob"))
    with pytest.raises(ConfigError, match="checkpoint.best_metric"):
        main(cli_args(tmp_path, "other", "--dry_run", "--config.checkpoint.best_metric=elob"))
    assert_files(files)
    assert leftovers(tmp_path) == []


def test_best_metric_choices_are_the_scalars_validation_records(stopped_run):
    from src.utils.config import read_schema

    choices = read_schema().rules["checkpoint.best_metric"].choices
    val = read_json(stopped_run / "metrics.json")["final"]["val"]
    scalars = {k for k, v in val.items() if isinstance(v, float | int)}
    assert set(choices) == scalars - {"step", "num_examples"}


# --- 2. --overwrite deletes the old run only after every write before the first step.


def _fail_atomic(monkeypatch: Any, name: str) -> None:
    from src.utils import io

    original = io.atomic_write_bytes

    def failing(path: Path, data: bytes) -> None:
        if Path(path).name == name:
            raise PermissionError(13, "Permission denied", str(path))
        original(path, data)

    monkeypatch.setattr(io, "atomic_write_bytes", failing)


def _fail_runs_csv(monkeypatch: Any) -> None:
    from src.training.run import run_index

    def failing(path: Path) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(run_index, "open_index", failing)


def _fail_checkpoint_folder(monkeypatch: Any) -> None:
    import tempfile

    from src.training.run import checkpoint

    original = tempfile.mkstemp

    def failing(*args: Any, **kwargs: Any) -> Any:
        if "model_best" in str(kwargs.get("dir", "")):
            raise PermissionError(13, "Permission denied", str(kwargs["dir"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", failing)


def _fail_tensorboard(monkeypatch: Any) -> None:
    import tensorboardX

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", "events.out.tfevents")

    monkeypatch.setattr(tensorboardX, "FileWriter", failing)


@pytest.mark.parametrize(
    "fail",
    [
        lambda mp: _fail_atomic(mp, "config.yaml"),
        lambda mp: _fail_atomic(mp, "provenance.json"),
        lambda mp: _fail_atomic(mp, "metrics.json"),
        lambda mp: _fail_atomic(mp, "params.txt"),
        _fail_runs_csv,
        _fail_checkpoint_folder,
        _fail_tensorboard,
    ],
    ids=["config", "provenance", "metrics", "params", "runs_csv", "checkpoints", "tensorboard"],
)
def test_an_overwrite_whose_first_writes_fail_keeps_the_old_run(tmp_path, monkeypatch, fail):
    from src.training.cli import train_main as main

    files = fake_run(tmp_path, "keep")
    before = (tmp_path / "runs.csv").read_text()
    fail(monkeypatch)
    with pytest.raises((OSError, StorageError)):
        main(cli_args(tmp_path, "keep", "--overwrite"))
    monkeypatch.undo()
    assert_files(files)
    assert leftovers(tmp_path) == []
    assert (tmp_path / "runs.csv").read_text() == before


# --- 3. Run ids never collide with the names --overwrite and the lock use.


@pytest.mark.parametrize("run_id", [".r.replaced", ".r.deleted", ".r.lock", ".hidden"])
def test_a_run_id_beginning_with_a_dot_is_refused(tmp_path, run_id):
    from src.training.cli import train_main as main

    paths = run_paths(tmp_path, "r")
    prepare(paths, resume=False, overwrite=False)
    (paths.run_dir / "config.yaml").write_text("x: 1\n")
    with pytest.raises(RunDirError, match="not beginning with '.'"):
        main(cli_args(tmp_path, run_id))
    with pytest.raises(RunDirError, match="not beginning with '.'"):
        main([f"--workdir={tmp_path}", f"--run_id={run_id}", "--resume"])
    assert (paths.run_dir / "config.yaml").read_text() == "x: 1\n"


# --- 4. A hand-edited config.yaml is refused on resume and evaluate.


def test_resume_refuses_a_hand_edited_config_naming_the_key(stopped_run, capsys):
    edit_yaml(stopped_run / "config.yaml", "training.kl", "beta", 0.5)
    before = (stopped_run / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match=r"config.yaml differs .*training.kl.beta"):
        resume(stopped_run)
    assert (stopped_run / "metrics.json").read_bytes() == before


def test_evaluate_refuses_a_hand_edited_config(stopped_run):
    edit_yaml(stopped_run / "config.yaml", "model", "activation", "tanh")
    with pytest.raises(
        ConfigError, match=r"model.activation \(recorded '\w+', config.yaml 'tanh'\)"
    ):
        evaluate(stopped_run)
    assert not (stopped_run / "eval").exists()


def test_a_resume_that_changes_epochs_is_recorded_and_resumes_again(stopped_run, capsys):
    from src.training.cli import train_main as main

    args = [f"--workdir={stopped_run.parents[1]}", "--run_id=stopped", "--resume"]
    assert main([*args, "--config.training.epochs=3"]) == 0
    prov = read_json(stopped_run / "provenance.json")
    assert prov["identity"]["config"]["training"]["epochs"] == 3
    capsys.readouterr()
    assert main(args) == 0
    assert "already completed" in capsys.readouterr().out


def test_a_resume_killed_between_config_and_provenance_resumes_again(stopped_run, capsys):
    """config.yaml already holds the new training.epochs, provenance.json's identity not yet:
    the next resume accepts it (a resumable key) and records it."""
    from src.training.cli import train_main as main

    edit_yaml(stopped_run / "config.yaml", "training", "epochs", 3)
    assert main([f"--workdir={stopped_run.parents[1]}", "--run_id=stopped", "--resume"]) == 0
    prov = read_json(stopped_run / "provenance.json")
    assert prov["identity"]["config"]["training"]["epochs"] == 3
    assert read_json(stopped_run / "metrics.json")["status"] == "completed"


# --- 5. A step copied from another run is refused like a corrupted one.


def test_resume_and_evaluate_refuse_a_step_from_another_run(stopped_run, tmp_path, capsys):
    from src.training.cli import train_main as main

    assert main(cli_args(tmp_path, "other")) == 0  # the same config: only the identity differs
    other = tmp_path / "checkpoints" / "other"
    # Its model_best replaces ours: evaluate refuses it (exit 4), naming the step.
    ours_best = stopped_run / "model_best"
    shutil.rmtree(ours_best)
    shutil.copytree(other / "model_best", ours_best)
    with pytest.raises(StorageError, match="not this run's"):
        evaluate(stopped_run)
    # Its newest model_last step lands in ours: the resume sets it aside and goes on from ours.
    newest = max(int(p.name) for p in (other / "model_last").iterdir() if p.name.isdigit())
    shutil.copytree(other / "model_last" / str(newest), stopped_run / "model_last" / "40")
    capsys.readouterr()
    assert resume(stopped_run) == 0
    err = capsys.readouterr().err
    assert "not this run's" in err and "resuming from step 30" in err
    assert any(".corrupt-" in p.name for p in (stopped_run / "model_last").iterdir())


# --- 7. An evaluation record names the run and is written only into it.


def test_an_evaluation_of_a_run_replaced_meanwhile_writes_nothing(stopped_run, monkeypatch):
    from src.evaluation import evaluate as ev

    compute = ev.compute_metrics

    def replacing(*args: Any, **kwargs: Any) -> Any:
        out = compute(*args, **kwargs)
        prov = read_json(stopped_run / "provenance.json")
        prov["identity"]["run"] = "f" * 32  # another run now lives in the folder
        (stopped_run / "provenance.json").write_text(json.dumps(prov))
        return out

    monkeypatch.setattr(ev, "compute_metrics", replacing)
    with pytest.raises(RunDirError, match="replaced while it was being evaluated"):
        evaluate(stopped_run)
    assert not (stopped_run / "eval").exists()


def test_the_notebook_flags_an_eval_record_of_another_run(stopped_run):
    from src.evaluation.notebook import read_evals, stale_evals

    record, _ = evaluate(stopped_run)
    assert record["run"] == read_json(stopped_run / "provenance.json")["identity"]["run"]
    assert stale_evals(stopped_run, read_evals(stopped_run)) == []
    prov = read_json(stopped_run / "provenance.json")
    prov["identity"]["run"] = "f" * 32
    (stopped_run / "provenance.json").write_text(json.dumps(prov))
    (warning,) = stale_evals(stopped_run, read_evals(stopped_run))
    assert "not written for this run" in warning


# --- 8. A missing metrics.json beside checkpoints is an error, not an empty history.


def test_resume_without_metrics_json_is_exit_4_and_keeps_tensorboard(stopped_run):
    (stopped_run / "metrics.json").unlink()
    log_dir = stopped_run.parents[1] / "logs" / "stopped"
    events = sorted(p.name for p in log_dir.glob("events.out.tfevents.*"))
    with pytest.raises(StorageError, match="metrics.json is missing beside the checkpoints"):
        resume(stopped_run)
    assert sorted(p.name for p in log_dir.glob("events.out.tfevents.*")) == events


# --- 9. Removing the lock file does not let a second writer in.


def test_a_removed_lock_file_does_not_let_a_second_writer_in(tmp_path):
    paths = run_paths(tmp_path, "busy")
    prepare(paths, resume=False, overwrite=False)
    with lock_run(paths):
        paths.lock.unlink()
        with pytest.raises(RunDirError, match="in use by another process"):
            lock_run(paths)
    with lock_run(paths):  # released with its holder
        pass


# --- 10. Damaged record files are one line, not a traceback.


@pytest.mark.parametrize(
    "name, text, error",
    [
        ("metrics.json", "[]", "not a run record"),
        ("metrics.json", '{"history": [{"split": "train"}]}', "not a run record"),
        ("provenance.json", "[]", "not a provenance record"),
    ],
)
def test_resume_with_a_damaged_record_file_is_exit_4(stopped_run, name, text, error):
    (stopped_run / name).write_text(text)
    with pytest.raises(StorageError, match=error):
        resume(stopped_run)


def test_resume_without_provenance_json_is_exit_4(stopped_run):
    (stopped_run / "provenance.json").unlink()
    with pytest.raises(StorageError, match="provenance.json is missing"):
        resume(stopped_run)


def test_evaluate_with_checksums_json_that_is_a_list_is_exit_4(stopped_run):
    (step,) = [p for p in (stopped_run / "model_best").iterdir() if p.name.isdigit()]
    (step / "checksums.json").write_text("[]")
    with pytest.raises(StorageError, match="checksums.json is not an object"):
        evaluate(stopped_run)


# --- A legacy run (made before run identities) still resumes and evaluates.


def test_a_legacy_run_resumes_and_evaluates_with_a_notice(tmp_path, monkeypatch, capsys):
    from src.training import loop
    from src.training.cli import train_main as main
    from src.training.run import identity

    # What 4bbfa3c wrote: no identity in provenance.json, none in the steps.
    monkeypatch.setattr(loop.identity, "new", lambda cfg: identity.Identity(None))
    assert main(cli_args(tmp_path, "old", "--config.training.epochs=1")) == 0
    monkeypatch.undo()
    run_dir = tmp_path / "checkpoints" / "old"
    prov = read_json(run_dir / "provenance.json")
    del prov["identity"]
    (run_dir / "provenance.json").write_text(json.dumps(prov))
    capsys.readouterr()
    record, _ = evaluate(run_dir)
    assert "no run identity" in capsys.readouterr().err and record["run"] is None
    args = [f"--workdir={tmp_path}", "--run_id=old", "--resume", "--config.training.epochs=2"]
    assert main(args) == 0
    assert "no run identity" in capsys.readouterr().err
    ident = read_json(run_dir / "provenance.json")["identity"]
    assert ident["legacy"] is True
    step, _ = read_state(run_dir / "model_last")
    sums = read_json(run_dir / "model_last" / str(step) / "checksums.json")
    assert sums["run"] == ident["run"]
    record, _ = evaluate(run_dir)  # the adopted identity: checked from now on
    assert record["run"] == ident["run"]


# --- 13. A short write to runs.csv is not ignored.


def test_a_short_write_to_runs_csv_raises_and_leaves_no_partial_row(tmp_path, monkeypatch):
    from src.training.run import run_index

    path = tmp_path / "runs.csv"
    run_index.append_row(path, {"event": "start", "run_id": "a"})
    before = path.read_bytes()
    real_write = os.write
    monkeypatch.setattr(run_index.os, "write", lambda fd, data: real_write(fd, data[:5]))
    with pytest.raises(OSError, match="wrote 5 of"):
        run_index.append_row(path, {"event": "start", "run_id": "b"})
    monkeypatch.undo()
    assert path.read_bytes() == before


# --- 14. Record files honour the umask.


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    from src.utils.io import atomic_write_json

    previous = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == mode


# --- 6. Relative data paths are resolved once, when the run is created, and checked.


def _npz(folder: Path, seed: int) -> None:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).random((600, 8, 8, 1), dtype=np.float32)
    np.savez(folder / "arrays.npz", train=x)


def test_resume_and_evaluate_from_another_directory_read_the_runs_own_data(
    tmp_path, monkeypatch, default_handlers, capsys
):
    import signal

    from src.training.cli import train_main as main
    from tests.helpers import at_batch

    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    _npz(first, 0)
    _npz(elsewhere, 1)  # the same relative name, other data
    workdir = tmp_path / "w"
    monkeypatch.chdir(first)
    at_batch(monkeypatch, 25, lambda: os.kill(os.getpid(), signal.SIGTERM))
    args = cli_args(workdir, "npz", "--data=npz", "--config.data.npz.path=arrays.npz")
    assert main(args) == 128 + signal.SIGTERM
    monkeypatch.undo()
    run_dir = workdir / "checkpoints" / "npz"
    monkeypatch.chdir(first)
    here, _ = evaluate(run_dir)
    monkeypatch.chdir(elsewhere)
    record, _ = evaluate(run_dir)  # reads first/arrays.npz, which it was trained on
    assert record["elbo"] == here["elbo"] and record["num_examples"] == here["num_examples"]
    assert main([f"--workdir={workdir}", "--run_id=npz", "--resume"]) == 0
    # The run's own file changed: refused, naming it.
    _npz(first, 2)
    from src.utils.errors import DataError

    with pytest.raises(DataError, match="differs from the data run npz trained on"):
        evaluate(run_dir)


# --- 10, 11. Input problems are one line (a ConfigError), never a traceback.


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.b1=1.0", "optimizer.b1 must be in [0, 1)"),
        ("optimizer.b2=1.0", "optimizer.b2 must be in [0, 1)"),
        ("optimizer.eps=0.0", "optimizer.eps must be > 0"),
        ("model.transformer.mlp_ratio=0.001", "rounds to an MLP width of 0"),
    ],
)
def test_values_that_can_never_train_are_config_errors(override, message):
    from src.utils.config import load_config
    from tests.helpers import BASELINE

    with pytest.raises(ConfigError, match=re_escape(message)):
        load_config(BASELINE, overrides=[override])


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize("coordinator", ["", "localhost:1"])
def test_distributed_without_what_jax_needs_is_a_config_error(coordinator):
    import subprocess
    import sys

    from tests.helpers import REPO

    code = (
        "from types import SimpleNamespace\n"
        "from src.training.device.processes import initialize_distributed\n"
        "from src.utils.errors import ConfigError\n"
        f"cfg = SimpleNamespace(distributed='true', coordinator_address={coordinator!r}, "
        "num_processes=0, process_id=-1)\n"
        "try:\n    initialize_distributed(cfg)\n"
        "except ConfigError as e:\n    print('ConfigError:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    expected = "ConfigError: parallel.distributed=true: jax.distributed cannot start"
    assert expected in out.stdout, out.stderr


def test_a_sweep_file_with_too_many_random_trials_is_refused(tmp_path):
    from src.experiments.spec import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(
        "experiment: configs/experiment/baseline.yaml\n"
        "random:\n  seed: 0\n  trials: 100000000\n  params:\n    training.lr: [0.001, 0.01]\n"
    )
    with pytest.raises(ConfigError, match="random.trials must be in 1..10000"):
        load_sweep(path)


def test_a_trial_whose_metrics_json_is_a_list_does_not_stop_the_sweep(tmp_path):
    from src.experiments import runner, summary

    run_dir = tmp_path / "checkpoints" / "t"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text("[]")
    assert runner._status(run_dir / "metrics.json") is None
    assert summary._record(run_dir / "metrics.json") == {}


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(capsys):
    from src.utils.cli import run

    def main(argv: Any) -> int:
        raise KeyboardInterrupt

    assert run(main, []) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted (SIGINT)"]


# --- 10, 12. Bad data files are one line naming them.


def _load_npz(path: Path) -> Any:
    from src.data.pipeline import load_splits
    from src.utils.config import load_config
    from tests.helpers import BASELINE

    cfg = load_config(BASELINE, {"data": "npz"}, [f"data.npz.path={path}"])
    return load_splits(cfg.data)


def test_an_npz_with_a_0d_array_is_a_data_error(tmp_path):
    import numpy as np

    from src.utils.errors import DataError

    np.savez(tmp_path / "a.npz", train=np.float32(1.0))
    with pytest.raises(DataError, match=r"expected \[N, D\].*got shape \(\)"):
        _load_npz(tmp_path / "a.npz")


def test_a_npy_or_text_file_named_npz_is_named_for_what_it_is(tmp_path):
    import numpy as np

    from src.utils.errors import DataError

    np.save(tmp_path / "a.npy", np.zeros((4, 2, 2), np.float32))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    with pytest.raises(DataError, match="a single .npy array, not an .npz archive"):
        _load_npz(tmp_path / "a.npz")
    (tmp_path / "t.npz").write_text("hello\n")
    with pytest.raises(DataError, match="not a zip archive") as info:
        _load_npz(tmp_path / "t.npz")
    assert "pickled" not in str(info.value)


def test_an_npz_whose_header_declares_terabytes_is_a_data_error(tmp_path):
    import io
    import zipfile

    import numpy as np

    from src.utils.errors import DataError

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1 << 20, 1 << 10)}
    )
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
        z.writestr("train.npy", header.getvalue() + b"\0" * 64)  # magic, header, few bytes
    with pytest.raises(DataError, match="big.npz"):
        _load_npz(tmp_path / "big.npz")


def test_an_idx_header_whose_dimensions_overflow_is_a_data_error():
    import struct

    from src.data.idx import parse_idx
    from src.utils.errors import DataError

    data = b"\0\0\x08\x03" + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1) + b"\0" * 8
    with pytest.raises(DataError, match="truncated: header declares"):
        parse_idx(data, 3, 0x08, "x")


def test_an_unreadable_data_file_is_a_data_error(tmp_path, monkeypatch):
    from pathlib import Path as P

    from src.data.idx import sha256_file
    from src.utils.errors import DataError

    path = tmp_path / "f"
    path.write_bytes(b"x")

    def denied(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(P, "open", denied)
    with pytest.raises(DataError, match="Permission denied"):
        sha256_file(path)


# --- 12. Messages that say what happened.


def test_a_permission_denied_step_is_not_set_aside(stopped_run, monkeypatch):
    from src.training.run import checkpoint

    digests = checkpoint.file_digests

    def denied(folder: Path) -> dict[str, str]:
        if folder.name == "30":
            raise PermissionError(13, "Permission denied", str(folder / "state"))
        return digests(folder)

    monkeypatch.setattr(checkpoint, "file_digests", denied)
    with pytest.raises(StorageError, match="30: permission denied; fix its permissions"):
        resume(stopped_run)
    assert sorted(p.name for p in (stopped_run / "model_last").iterdir()) == ["20", "30"]


def test_a_shape_mismatch_on_resume_names_the_array(stopped_run):
    prov = read_json(stopped_run / "provenance.json")
    prov["identity"]["config"]["model"]["latent_dim"] = 3  # config and record agree, code not
    (stopped_run / "provenance.json").write_text(json.dumps(prov))
    edit_yaml(stopped_run / "config.yaml", "model", "latent_dim", 3)
    with pytest.raises(RunDirError, match=r"is float32\[4, 32\] in the checkpoint but"):
        resume(stopped_run)


def test_evaluate_reads_the_newer_step_when_training_rotates_one_away(stopped_run, monkeypatch):
    from src.training.run import checkpoint

    check = checkpoint.check_matches
    rotated: list[int] = []

    def rotating(manager: Any, step: int, *args: Any) -> None:
        if not rotated:  # a training run saves step + 10 and deletes step meanwhile
            folder = Path(manager.directory)
            (folder / str(step)).rename(folder / str(step + 10))
            rotated.append(step)
        check(manager, step, *args)

    monkeypatch.setattr(checkpoint, "check_matches", rotating)
    record, _ = evaluate(stopped_run)
    assert rotated and record["step"] == rotated[0]


def test_unreadable_record_and_config_files_are_one_line(tmp_path, monkeypatch):
    from pathlib import Path as P

    from src.utils.config import read_yaml
    from src.utils.io import read_json as read

    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "config.yaml").write_text("a: 1\n")

    def denied(self: Any, *args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(P, "read_text", denied)
    with pytest.raises(StorageError, match="cannot read .*metrics.json: Permission denied"):
        read(tmp_path / "metrics.json")
    with pytest.raises(ConfigError, match="cannot read .*config.yaml: Permission denied"):
        read_yaml(tmp_path / "config.yaml")


def test_out_of_device_memory_is_one_line_saying_what_to_lower(capsys):
    import jax

    from src.utils.cli import run

    def main(argv: Any) -> int:
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 3.6TiB.\\nmore lines"
        )

    assert run(main, []) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "out of device memory" in line and "training.batch_size" in line


def test_a_failed_save_names_a_symlinked_newest_step(tmp_path):
    from types import SimpleNamespace

    from src.training.run.checkpoint import _storage_error

    real = tmp_path / "elsewhere" / "20"
    real.mkdir(parents=True)
    (real / "commit_success.txt").write_text("ok")
    (tmp_path / "model_last").mkdir()
    (tmp_path / "model_last" / "20").symlink_to(real)
    manager = SimpleNamespace(latest_step=lambda: None, directory=tmp_path / "model_last")
    error = _storage_error(manager, 40, OSError(28, "No space left on device"))
    assert "newest complete checkpoint there: step 20" in str(error)
