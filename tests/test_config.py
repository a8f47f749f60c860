"""Config loading, composition, overrides, and every user error the loader must catch."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from src.utils.config import load_config, load_saved_config, save_config
from src.utils.errors import ConfigError
from tests.helpers import BASELINE, REPO, run_script


def test_baseline_composes_defaults_groups_and_experiment():
    cfg = load_config(BASELINE)
    assert cfg.experiment.name == "baseline"
    assert cfg.model.type == "mlp" and cfg.data.name == "digits"
    experiment = yaml.safe_load(BASELINE.read_text())
    assert cfg.training.epochs == experiment["training"]["epochs"]
    default = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    assert cfg.optimizer.b2 == default["optimizer"]["b2"]  # untouched keys keep the default


def test_overrides_win_and_are_typed():
    cfg = load_config(BASELINE, overrides=["training.lr=3e-4", "model.latent_dim=32"])
    assert cfg.training.lr == pytest.approx(3e-4) and isinstance(cfg.training.lr, float)
    assert cfg.model.latent_dim == 32


def test_scientific_notation_without_dot_is_a_float(tmp_path: Path):
    exp = tmp_path / "e.yaml"
    exp.write_text("defaults: {model: mlp, data: digits}\ntraining:\n  lr: 1e-4\n")
    cfg = load_config(exp)
    assert cfg.training.lr == 0.0001 and isinstance(cfg.training.lr, float)


def test_list_override_and_empty_hidden_list():
    cfg = load_config(BASELINE, overrides=["model.hidden_dims=[]"])
    assert tuple(cfg.model.hidden_dims) == ()


def test_group_choice_from_command_line_replaces_experiment_defaults(tmp_path: Path):
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "default.yaml").write_text((REPO / "configs" / "default.yaml").read_text())
    (tmp_path / "data" / "digits.yaml").write_text("data: {name: digits}\n")
    (tmp_path / "model" / "mlp.yaml").write_text("model: {latent_dim: 3}\n")
    (tmp_path / "model" / "wide.yaml").write_text("model: {latent_dim: 5}\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("defaults: {model: mlp, data: digits}\n")
    assert load_config(exp, root=tmp_path).model.latent_dim == 3
    assert load_config(exp, {"model": "wide"}, root=tmp_path).model.latent_dim == 5


def test_config_is_frozen():
    cfg = load_config(BASELINE)
    with pytest.raises((AttributeError, TypeError, ValueError)):
        cfg.training.lr = 1.0


def test_saved_config_loads_back_equal(tmp_path: Path):
    cfg = load_config(BASELINE, overrides=["training.lr=2e-4", "model.hidden_dims=[8, 4]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_saved_config(tmp_path / "config.yaml") == cfg
    yaml.safe_load((tmp_path / "config.yaml").read_text())  # plain YAML, no Python tags


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.lrr=1", "unknown config key 'training.lrr'; did you mean 'training.lr'"),
        ("trainig.lr=1", "unknown config key 'trainig'"),
        ("training.batch_size=abc", "training.batch_size: expected int, got str"),
        ("training.batch_size=1.5", "training.batch_size: expected int, got float"),
        ("training.lr=fast", "training.lr: expected float, got str"),
        ("logging.tensorboard=1", "logging.tensorboard: expected bool, got int"),
        ("model.hidden_dims=7", "model.hidden_dims: expected list, got int"),
        ("training.batch_size=0", "training.batch_size must be > 0"),
        ("training.epochs=-1", "training.epochs must be > 0"),
        ("training.lr=0", "training.lr must be > 0"),
        ("model.latent_dim=0", "model.latent_dim must be > 0"),
        ("data.val_fraction=1.5", "data.val_fraction must be in [0, 1]"),
        ("optimizer.type=rmsprop", "optimizer.type: 'rmsprop' is not one of"),
        ("training", "must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str):
    with pytest.raises(ConfigError) as err:
        load_config(BASELINE, overrides=[override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_a_file(tmp_path: Path):
    exp = tmp_path / "e.yaml"
    exp.write_text("model:\n  latnt_dim: 3\n")
    with pytest.raises(ConfigError, match="'model.latnt_dim'; did you mean 'model.latent_dim'"):
        load_config(exp)


def test_missing_files_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(
        ConfigError, match="model='nope'.*available: conv, hierarchical, mlp, transformer"
    ):
        load_config(BASELINE, {"model": "nope"})


def test_unsafe_yaml_is_rejected(tmp_path: Path):
    exp = tmp_path / "e.yaml"
    exp.write_text("training: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(exp)


def test_saved_config_takes_resume_overrides(tmp_path: Path):
    cfg = load_config(BASELINE, overrides=["training.epochs=3"])
    save_config(cfg, tmp_path / "config.yaml")
    resumed = load_saved_config(tmp_path / "config.yaml", ["training.epochs=5"])
    assert resumed.training.epochs == 5 and resumed.training.lr == cfg.training.lr


def test_saved_config_takes_eval_overrides(tmp_path: Path):
    cfg = load_config(BASELINE)
    save_config(cfg, tmp_path / "config.yaml")
    again = load_saved_config(tmp_path / "config.yaml", ["eval.iwae_samples=7"])
    assert again.eval.iwae_samples == 7 and again.model == cfg.model
    with pytest.raises(ConfigError, match="eval.iwae_chunk must be > 0"):
        load_saved_config(tmp_path / "config.yaml", ["eval.iwae_chunk=0"])


def _uncommented_keys(path: Path) -> list[str]:
    """Lines that set a key (not a section header) with no comment on the line or just above."""
    bad, previous = [], ""
    for line in path.read_text().splitlines():
        body = line.split("#", 1)[0]
        commented = "#" in line or previous.strip().startswith("#")
        if ":" in body and not body.rstrip().endswith(":") and not commented:
            bad.append(f"{path.name}: {line.strip()}")
        previous = line
    return bad


@pytest.mark.parametrize(
    "path",
    [
        REPO / "configs" / "default.yaml",
        *sorted((REPO / "configs" / "model").glob("*.yaml")),
        REPO / "configs" / "experiment" / "conv.yaml",
        REPO / "configs" / "experiment" / "transformer.yaml",
    ],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_key_is_commented(path: Path):
    assert _uncommented_keys(path) == []


def test_the_comment_check_can_fail(tmp_path: Path):
    f = tmp_path / "x.yaml"
    f.write_text("model:\n  type: mlp\n  latent_dim: 3  # ok\n")
    assert _uncommented_keys(f) == ["x.yaml: type: mlp"]


@pytest.mark.parametrize("name", ["conv", "transformer"])
def test_family_experiments_compose(name: str):
    cfg = load_config(REPO / "configs" / "experiment" / f"{name}.yaml")
    assert cfg.model.type == name and cfg.data.name == "digits"


def test_seed_transformer_width_is_accepted():
    cfg = load_config(
        REPO / "configs" / "experiment" / "transformer.yaml",
        overrides=["model.latent_dim=512", "model.hidden_dim=768"],
    )
    assert (cfg.model.latent_dim, cfg.model.hidden_dim) == (512, 768)


@pytest.mark.parametrize(
    "text, position, problem",
    [
        # An unclosed flow list: the error is where the file ends, the list's start is context.
        (
            "model:\n  latent_dim: 3\n  hidden_dims: [32, 16\n",
            "line 4, column 1",
            "expected ',' or ']', but got '<stream end>' (while parsing a flow sequence at line 3, "
            "column 16)",
        ),
        ("training:\n\tlr: 0.1\n", "line 2, column 1", "found character '\\t'"),
        ("training:\n  lr: 0.1\n epochs: 3\n", "line 3, column 2", "expected <block end>"),
    ],
)
def test_yaml_syntax_error_names_file_line_and_column(
    tmp_path: Path, text: str, position: str, problem: str
):
    exp = tmp_path / "e.yaml"
    exp.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(exp)
    message = str(err.value)
    assert message.startswith(f"{exp}, {position}: invalid YAML: "), message
    assert problem in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "override, message",
    [
        # Close names in the key's own section, never the section's own name.
        ("training.lrr=1", "unknown config key 'training.lrr'; did you mean 'training.lr'?"),
        ("training.kl.bta=1", "; did you mean 'training.kl.beta'?"),
        ("model.conv.chanels=[8]", "; did you mean 'model.conv.channels'?"),
        ("eval.iwae=3", "; did you mean 'eval.iwae_samples' or 'eval.iwae_chunk'?"),
        # Nothing close: the section's keys.
        (
            "training.foo=1",
            "unknown config key 'training.foo' (keys of training: seed, epochs, batch_size, lr, ",
        ),
        ("compile.zzz=1", "(keys of compile: deterministic_gpu, cache_dir, min_compile_secs)"),
        # The name belongs to another section.
        (
            "training.latent_dim=3",
            "did you mean 'model.latent_dim' or 'data.synthetic.latent_dim'?",
        ),
        # An unknown section: the sections.
        ("trainig.lr=1", "unknown config key 'trainig'; did you mean 'training'?"),
        ("zzz.a=1", "unknown config key 'zzz' (sections: experiment, model, data, training, "),
    ],
)
def test_unknown_key_suggests_keys_of_its_own_section(override: str, message: str):
    with pytest.raises(ConfigError) as err:
        load_config(BASELINE, overrides=[override])
    assert message in str(err.value)
    assert "did you mean 'training'?" not in str(err.value) or override.startswith("trainig")
    assert "\n" not in str(err.value)


def test_unknown_key_in_a_sweep_file_gets_the_same_hint(tmp_path: Path):
    from src.experiments.spec import load_sweep

    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nexperiment: {BASELINE}\ngrid:\n  training.foo: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"'training.foo' is not a config key .*keys of training"):
        load_sweep(sweep)
    sweep.write_text(f"name: s\nexperiment: {BASELINE}\ngrid:\n  training.kl: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"training.kl is a section; its keys: beta, warmup"):
        load_sweep(sweep)


def test_train_reports_a_yaml_syntax_error_in_one_line(tmp_path: Path):
    exp = tmp_path / "e.yaml"
    exp.write_text("defaults:\n  model: mlp\ntraining:\n  lr: [0.1\n")
    result = run_script("train.py", f"--config={exp}", f"--workdir={tmp_path / 'w'}", timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"error: {exp}, line 5, column 1: invalid YAML: "
    ), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()
