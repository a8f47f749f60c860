"""A key's constraint is stated once, as the annotation that opens its comment in default.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from src.utils.config import Rule, load_config, parse_rule, read_schema, schema_rules
from src.utils.errors import ConfigError
from tests.helpers import BASELINE, REPO


def configs_with(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of configs/ whose default.yaml has the one line old replaced by new."""
    root = tmp_path / "configs"
    shutil.copytree(REPO / "configs", root)
    text = (root / "default.yaml").read_text()
    assert text.count(old) == 1, old
    (root / "default.yaml").write_text(text.replace(old, new))
    return root


def test_removing_an_annotation_removes_the_check(tmp_path: Path):
    with pytest.raises(ConfigError, match="model.latent_dim must be > 0, got 0"):
        load_config(BASELINE, overrides=["model.latent_dim=0"])
    root = configs_with(tmp_path, "# > 0: dimensionality of z", "# dimensionality of z")
    assert load_config(BASELINE, overrides=["model.latent_dim=0"], root=root).model.latent_dim == 0


def test_editing_an_annotation_changes_the_check(tmp_path: Path):
    root = configs_with(
        tmp_path,
        "# relu | gelu | tanh | elu | silu: in mlp",
        "# relu | gelu | elu | silu: in mlp",
    )
    assert load_config(BASELINE, overrides=["model.activation=tanh"]).model.activation == "tanh"
    with pytest.raises(ConfigError, match="'tanh' is not one of relu, gelu, elu, silu"):
        load_config(BASELINE, overrides=["model.activation=tanh"], root=root)
    root = configs_with(tmp_path / "2", "# used in the default run id", "# [0, 1]: used in")
    with pytest.raises(ValueError, match="experiment.name: the rule '.0, 1.' does not fit"):
        load_config(BASELINE, root=root)


@pytest.mark.parametrize(
    "annotation, good, bad, message",
    [
        ("> 0", [1, 0.5], [0, -1], "k must be > 0, got 0"),
        (">= 0", [0, 3], [-1e-9], "k must be >= 0, got -1e-09"),
        (">= -1", [-1, 0], [-2], "k must be >= -1, got -2"),
        ("[0, 1]", [0.0, 1.0], [1.5, -0.1], "k must be in [0, 1], got 1.5"),
        ("(0, 1]", [1.0, 1e-6], [0.0, 2.0], "k must be in (0, 1], got 0.0"),
        ("[0, 1)", [0.0], [1.0], "k must be in [0, 1), got 1.0"),
        ("a | b_c", ["a", "b_c"], ["b", ""], "k: 'b' is not one of a, b_c"),
    ],
)
def test_rules_accept_and_reject(annotation: str, good: list, bad: list, message: str):
    rule = parse_rule(annotation)
    assert isinstance(rule, Rule)
    assert all(rule.error("k", v) is None for v in good)
    assert all(rule.error("k", v) for v in bad)
    assert rule.error("k", bad[0]) == message


@pytest.mark.parametrize("comment", ["registry name", "p(x|z)", "0 disables", ""])
def test_plain_comments_state_no_rule(comment: str):
    assert parse_rule(comment) is None


@pytest.mark.parametrize("annotation", [">0", "> zero", "[0, 1", "(0 1]", "a | B", "x | y z"])
def test_a_malformed_rule_is_a_schema_bug(annotation: str):
    with pytest.raises(ValueError, match="malformed constraint"):
        parse_rule(annotation)


def test_the_comment_follows_the_value():
    text = (
        "a:\n"
        '  b: "x # > 0: not a comment"  # [0, 1]: share\n'
        "  c: [1, 2]  # >= 0: after a list\n"
        "  d: 3\n"
        "  # > 0: a comment on its own line belongs to no key\n"
        "e:  # > 0: a section has no rule\n"
        "  f: x  # x | y\n"
    )
    rules = schema_rules(text)
    assert {k: r.text for k, r in rules.items()} == {"a.b": "[0, 1]", "a.c": ">= 0", "e.f": "x | y"}


def test_every_rule_of_default_yaml_holds_for_its_default():
    defaults, rules = read_schema()
    assert len(rules) > 70 and "training.lr" in rules and "parallel.backend" in rules
    for key, rule in rules.items():
        value = defaults
        for part in key.split("."):
            value = value[part]
        assert rule.error(key, value) is None, key
    yaml.safe_load((REPO / "configs" / "default.yaml").read_text())


def test_a_string_key_with_true_and_false_choices_takes_a_yaml_bool():
    assert load_config(BASELINE, overrides=["data.on_device=true"]).data.on_device == "true"
    with pytest.raises(ConfigError, match="model.type: expected str, got bool"):
        load_config(BASELINE, overrides=["model.type=true"])
