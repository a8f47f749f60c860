"""YAML configs -> validated, frozen ml_collections configs.

Composition order (later wins): configs/default.yaml, the group files an experiment
names under `defaults:` (e.g. configs/model/mlp.yaml), the experiment file itself,
then command-line overrides `training.lr=3e-4`. default.yaml is the schema: every
other source may only set keys that exist there, with a value of the same type, and a key's
range or choices are the annotation that opens its comment there (`Rule`, `schema_rules`).

Hand-written rather than pydantic, jsonschema or absl's config_flags: those need the schema
stated a second time (classes, a JSON schema, a Python config file), while here the YAML file
that holds the defaults is the schema, and errors name the key, the file and what is accepted.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections
import yaml

from src.utils.errors import ConfigError
from src.utils.io import atomic_write_text

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
GROUPS = ("model", "data")

# A key's constraint is the annotation that opens its comment in default.yaml, up to the first
# ": " (e.g. "latent_dim: 16  # > 0: dimensionality of z"): "> N", ">= N", an interval
# "[a, b]", "(a, b]", "[a, b)" or "(a, b)", or choices "a | b | c". Schema.rules parses them.
COMPARISON = re.compile(r"(>=?) (-?[0-9.e+-]+)")
INTERVAL = re.compile(r"([\[(])(-?[0-9.e+-]+), (-?[0-9.e+-]+)([\])])")
CHOICE_LIST = re.compile(r"[a-z0-9_]+( \| [a-z0-9_]+)+")


@dataclass(frozen=True)
class Rule:
    """One key's constraint: its values lie in an interval, or are one of a few strings."""

    text: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()

    def error(self, key: str, value: Any) -> str | None:
        """The one-line complaint about value, or None when it satisfies the rule."""
        if self.choices:
            if value in self.choices:
                return None
            return f"{key}: {value!r} is not one of {', '.join(self.choices)}"
        above = self.low < value if self.low_open else self.low <= value
        below = value < self.high if self.high_open else value <= self.high
        if above and below:
            return None
        where = f"in {self.text}" if self.text[0] in "[(" else self.text
        return f"{key} must be {where}, got {value!r}"


def parse_rule(annotation: str) -> Rule | None:
    """The Rule an annotation states, or None for a comment that states none. Something that
    starts like a rule but is not one is a mistake in the schema file, not the user's: ValueError.
    """
    if match := COMPARISON.fullmatch(annotation):
        return Rule(annotation, low=float(match[2]), low_open=match[1] == ">")
    if match := INTERVAL.fullmatch(annotation):
        low, high = float(match[2]), float(match[3])
        return Rule(annotation, low, high, low_open=match[1] == "(", high_open=match[4] == ")")
    if CHOICE_LIST.fullmatch(annotation):
        return Rule(annotation, choices=tuple(annotation.split(" | ")))
    if annotation[:1] in tuple("<>[(") or " | " in annotation:
        raise ValueError(f"malformed constraint {annotation!r} in the schema file")
    return None


def schema_rules(text: str) -> dict[str, Rule]:
    """{dotted key: Rule} for every key of a schema file whose comment opens with a constraint.

    The comment is what follows the key's value on its line (yaml.compose gives the value's end,
    so a "#" inside a quoted value is not mistaken for one)."""
    lines = text.splitlines()
    rules: dict[str, Rule] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        for key_node, value_node in node.value:
            dotted = prefix + key_node.value
            if isinstance(value_node, yaml.MappingNode):
                walk(value_node, dotted + ".")
                continue
            end = value_node.end_mark
            line = lines[end.line][end.column :] if end.line == key_node.start_mark.line else ""
            comment = line.partition("#")[2].strip() if line.lstrip().startswith("#") else ""
            rule = parse_rule(comment.partition(": ")[0].strip()) if comment else None
            if rule:
                rules[dotted] = rule

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if isinstance(root, yaml.MappingNode):
        walk(root, "")
    return rules


class Schema(NamedTuple):
    """default.yaml read twice: its values (the defaults and types) and its keys' constraints."""

    defaults: dict[str, Any]
    rules: dict[str, Rule]


def read_schema(root: Path = CONFIG_ROOT) -> Schema:
    """default.yaml's defaults and rules; a rule that does not fit its key's type is a ValueError
    (a mistake in the schema file)."""
    path = root / "default.yaml"
    defaults, rules = read_yaml(path), schema_rules(path.read_text())
    for key, rule in rules.items():
        default = _get(defaults, key)
        fits = isinstance(default, str) if rule.choices else _type_name(default) in ("int", "float")
        if not fits:
            raise ValueError(f"{path}: {key}: the rule {rule.text!r} does not fit {default!r}")
    return Schema(defaults, rules)


def bool_as_str(key: str, rules: Mapping[str, Rule]) -> bool:
    """String keys whose choices include true and false also accept a YAML bool (on_device)."""
    return key in rules and {"true", "false"} <= set(rules[key].choices)


# Grey levels of the datasets whose levels are fixed by their name (digits: 0..16; 8-bit images).
DATA_LEVELS = {"digits": 17, "mnist": 256, "fashion_mnist": 256, "cifar10": 256}


def yaml_error_text(error: yaml.YAMLError) -> str:
    """', line L, column C: invalid YAML: <problem> (<context> at line L', column C')' for a PyYAML
    error (1-based positions, as editors count); ': invalid YAML: ...' when it has no position."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return f": invalid YAML: {str(error).splitlines()[0]}"
    mark = error.problem_mark
    text = f", line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {error.problem}"
    if error.context and error.context_mark is not None:
        at = error.context_mark
        text += f" ({error.context} at line {at.line + 1}, column {at.column + 1})"
    return text


def read_yaml(path: Path) -> dict[str, Any]:
    """Reads a YAML mapping with the safe loader; a missing or malformed file is a ConfigError
    (a syntax error names the line and column)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}{yaml_error_text(e)}") from None
    except OSError as e:  # unreadable: permissions
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Returns base with update merged in; nested mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """'training.lr=3e-4' -> ('training.lr', '3e-4' parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}") from None
    return key, value


def nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _flat_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, Mapping):
            keys.extend(_flat_keys(value, path + "."))
    return keys


def _type_name(value: Any) -> str:
    return {
        bool: "bool",
        int: "int",
        float: "float",
        str: "str",
        list: "list",
        dict: "mapping",
    }.get(type(value), type(value).__name__)


def unknown_key_hint(dotted: str, schema: Mapping[str, Any]) -> str:
    """What to say after "unknown config key 'a.b.c'": the close names of its own section
    ("; did you mean 'a.b.x'?"), else a key of that name in another section, else the section's
    keys. Only the first unknown part of the path counts ('trainig.lr' -> the section names)."""
    parts = dotted.split(".")
    section: Mapping[str, Any] = schema
    depth = 0
    while depth < len(parts) - 1 and isinstance(section.get(parts[depth]), Mapping):
        section = section[parts[depth]]
        depth += 1
    prefix = "".join(f"{part}." for part in parts[:depth])
    name = parts[depth]
    names = [str(key) for key in section]
    if depth == len(parts) - 1 and isinstance(section.get(name), Mapping):
        return f" ({dotted} is a section; its keys: {', '.join(map(str, section[name]))})"
    close = [prefix + key for key in difflib.get_close_matches(name, names, n=3)]
    if not close:  # a part of the name: 'iwae' -> 'eval.iwae_samples', 'eval.iwae_chunk'
        close = [prefix + key for key in names if len(name) >= 3 and name in key][:3]
    if not close and depth == len(parts) - 1:
        close = [key for key in _flat_keys(schema) if key.rsplit(".", 1)[-1] == name]
    if close:
        quoted = [repr(key) for key in close]
        shown = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        return f"; did you mean {shown}?"
    where = f"keys of {prefix[:-1]}" if prefix else "sections"
    return f" ({where}: {', '.join(names)})"


def _coerce(key: str, value: Any, default: Any, schema: Schema) -> Any:
    """Checks value against the type of its default; returns it converted where lossless."""
    if isinstance(default, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_type_name(value)} {value!r}")
        out = {}
        for sub, sub_value in value.items():
            path = f"{key}.{sub}" if key else str(sub)
            if sub not in default:
                hint = unknown_key_hint(path, schema.defaults)
                raise ConfigError(f"unknown config key {path!r}{hint}")
            out[sub] = _coerce(path, sub_value, default[sub], schema)
        return out
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string.
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, bool) and bool_as_str(key, schema.rules):
            return "true" if value else "false"
    elif isinstance(default, list):
        if isinstance(value, list | tuple):
            if default:
                return [_coerce(f"{key}[{i}]", v, default[0], schema) for i, v in enumerate(value)]
            return list(value)
    raise ConfigError(f"{key}: expected {_type_name(default)}, got {_type_name(value)} {value!r}")


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def check_model(model: Mapping[str, Any]) -> None:
    """Model checks that need no image shape (shape checks happen when the model is built)."""
    for key in (
        "hidden_dims",
        "conv.channels",
        "conv.kernel_sizes",
        "conv.strides",
        "hierarchical.groups",
        "hierarchical.group_dims",
        "hierarchical.widths",
        "hierarchical.conv.downsample",
    ):
        values = _get(model, key)
        if any(v <= 0 for v in values):
            raise ConfigError(f"model.{key} must be positive integers, got {values}")
    conv = model["conv"]
    lengths = {k: len(conv[k]) for k in ("channels", "kernel_sizes", "strides")}
    if len(set(lengths.values())) > 1:
        raise ConfigError(
            "model.conv: channels, kernel_sizes and strides need one entry per layer, got lengths "
            + ", ".join(f"{k}={n}" for k, n in lengths.items())
        )
    width = round(model["hidden_dim"] * model["transformer"]["mlp_ratio"])
    if width < 1:
        raise ConfigError(
            f"model.transformer.mlp_ratio ({model['transformer']['mlp_ratio']}) times "
            f"model.hidden_dim ({model['hidden_dim']}) rounds to an MLP width of {width}; "
            "it must be at least 1"
        )
    heads = model["transformer"]["heads"]
    if model["hidden_dim"] % heads:
        raise ConfigError(
            f"model.hidden_dim ({model['hidden_dim']}) must be divisible by "
            f"model.transformer.heads ({heads})"
        )
    gaussian = model["gaussian"]
    if gaussian["scale"] != "fixed" and gaussian["fixed_scale"] <= gaussian["min_scale"]:
        raise ConfigError(
            f"model.gaussian.fixed_scale ({gaussian['fixed_scale']}) must exceed "
            f"model.gaussian.min_scale ({gaussian['min_scale']}) for a learned scale"
        )


def check_values(cfg: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """Every key's own rule (from its annotation in default.yaml), then the checks that relate
    several keys or the entries of a list."""
    for key in _flat_keys(cfg):
        value = _get(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
    for key, rule in rules.items():
        if message := rule.error(key, _get(cfg, key)):
            raise ConfigError(message)
    check_model(cfg["model"])
    kl = cfg["training"]["kl"]
    if kl["warmup"] == "linear" and kl["warmup_steps"] == 0:
        raise ConfigError("training.kl.warmup_steps must be > 0 when training.kl.warmup is linear")
    check_objective(cfg["training"])
    check_hierarchical(cfg["model"], cfg["training"], cfg["eval"])
    if cfg["data"]["val_fraction"] + cfg["data"]["test_fraction"] >= 1.0:
        raise ConfigError("data.val_fraction + data.test_fraction must be < 1")
    check_data_values(cfg["data"])
    check_likelihood_data(cfg["model"], cfg["data"])
    synthetic = cfg["data"]["synthetic"]
    likelihood = cfg["model"]["likelihood"]
    if (
        cfg["data"]["name"] == "synthetic"
        and synthetic["kind"] == "linear"
        and likelihood in ("bernoulli", "categorical", "dmol")
    ):
        raise ConfigError(
            f"data.synthetic.kind=linear gives real-valued (PPCA) data, but model.likelihood="
            f"{likelihood} needs values in [0, 1]; use data.synthetic.kind=manifold or a Gaussian likelihood"
        )


def check_likelihood_data(model: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    """A discretized likelihood must see the data's own grey levels: a DMOL on binarized images
    or with another number of levels than the dataset has would score a different data set (and
    its bits/dim would not be the dataset's). Datasets whose levels are not known from their
    name (npz, synthetic) are read as round(x * (levels - 1)) with the configured levels."""
    if model["likelihood"] != "dmol":
        return
    levels = model["dmol"]["levels"]
    if data["binarize"] != "none":
        raise ConfigError(
            f"model.likelihood=dmol models the grey levels, but data.binarize={data['binarize']} "
            "makes the images binary; use data.binarize=none (or the bernoulli likelihood)"
        )
    known = DATA_LEVELS.get(data["name"])
    if known is not None and known != levels:
        raise ConfigError(
            f"model.dmol.levels={levels} does not match data.name={data['name']}, which has "
            f"{known} grey levels; set model.dmol.levels={known}"
        )


def check_objective(training: Mapping[str, Any]) -> None:
    """The IWAE bound is optimized as it is: the KL knobs belong to the ELBO objective."""
    if training["objective"] == "elbo":
        if training["iwae_gradient"] != "standard":
            raise ConfigError(
                "training.iwae_gradient=dreg needs training.objective=iwae (it is the IWAE "
                "bound's encoder gradient)"
            )
        return
    kl = training["kl"]
    changed = [
        f"training.kl.{k}={kl[k]}"
        for k, plain in (("beta", 1.0), ("warmup", "none"), ("free_bits", 0.0))
        if kl[k] != plain
    ]
    if changed:
        raise ConfigError(
            f"training.objective=iwae optimizes the IWAE bound as it is; {', '.join(changed)} "
            "applies to the ELBO objective only (use beta 1, warmup none, free_bits 0)"
        )


def check_hierarchical(
    model: Mapping[str, Any], training: Mapping[str, Any], evaluation: Mapping[str, Any]
) -> None:
    """The hierarchical family's checks that need no image shape (src/models/hier_plan.py checks
    the resolutions when the model is built)."""
    temperatures = evaluation["sample_temperatures"]
    if not temperatures or any(t <= 0 for t in temperatures):
        raise ConfigError(
            f"eval.sample_temperatures must be positive numbers (at least one), got {temperatures}"
        )
    if model["type"] != "hierarchical":
        return
    h = model["hierarchical"]
    if h["structure"] == "bottom_up" and h["body"] != "mlp":
        raise ConfigError(
            "model.hierarchical.structure=bottom_up is built with body mlp only (Burda et al.'s "
            "dense conditionals); use structure top_down for body conv"
        )
    lists = ["groups", "group_dims", "widths"] + (
        ["conv.downsample"] if h["body"] == "conv" else []
    )
    lengths = {k: len(_get(h, k)) for k in lists}
    if len(set(lengths.values())) != 1 or not lengths["groups"]:
        raise ConfigError(
            "model.hierarchical: "
            + ", ".join(lists)
            + " need one entry per stage (at least one), got lengths "
            + ", ".join(f"{k}={n}" for k, n in lengths.items())
        )
    groups = sum(h["groups"])
    keep = evaluation["keep_top_groups"]
    if any(not 0 <= m <= groups for m in keep):
        raise ConfigError(
            f"eval.keep_top_groups must be in [0, {groups}] (the model has {groups} latent "
            f"groups, model.hierarchical.groups {h['groups']}), got {keep}"
        )
    if training["objective"] == "iwae" and training["iwae_gradient"] == "dreg":
        if h["structure"] == "top_down":
            raise ConfigError(
                "training.iwae_gradient=dreg does not hold for model.hierarchical.structure="
                "top_down: its posterior q(z_l|x, z_>l) shares the top-down state, and so the "
                "parameters, of the prior p(z_l|z_>l), while DReG needs inference parameters "
                "that log p(x, z) does not use; use iwae_gradient standard"
            )


def check_data_values(data: Mapping[str, Any]) -> None:
    """Shapes and lists of the data section that the generic checks above cannot express."""
    low_high = data["npz"]["value_range"]
    if len(low_high) != 2 or not low_high[0] < low_high[1]:
        raise ConfigError(
            f"data.npz.value_range must be [low, high] with low < high, got {low_high}"
        )
    syn = data["synthetic"]
    if len(syn["shape"]) != 3 or any(s <= 0 for s in syn["shape"]):
        raise ConfigError(
            f"data.synthetic.shape must be [H, W, C] of positive ints, got {syn['shape']}"
        )
    spectrum = syn["spectrum"]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in spectrum)
    if not numbers or any(v <= 0 for v in spectrum) or len(spectrum) not in (0, syn["latent_dim"]):
        raise ConfigError(
            f"data.synthetic.spectrum must be [] or {syn['latent_dim']} positive numbers "
            f"(one per data.synthetic.latent_dim), got {spectrum}"
        )
    dim = syn["shape"][0] * syn["shape"][1] * syn["shape"][2]
    if syn["latent_dim"] > dim:
        raise ConfigError(
            f"data.synthetic.latent_dim ({syn['latent_dim']}) exceeds the observation dimension "
            f"{dim} of data.synthetic.shape {syn['shape']}"
        )


def validate(tree: Mapping[str, Any], schema: Schema) -> dict[str, Any]:
    """Type-checks tree against the schema's defaults (which supply missing keys) and checks its
    rules."""
    full = deep_merge(schema.defaults, _coerce("", tree, schema.defaults, schema))
    check_values(full, schema.rules)
    return full


def freeze(tree: Mapping[str, Any]) -> ml_collections.FrozenConfigDict:
    return ml_collections.FrozenConfigDict(tree)


def to_plain(cfg: Any) -> Any:
    """ConfigDict (or nested tuples) -> plain dicts and lists, safe for yaml.safe_dump."""
    if isinstance(cfg, Mapping | ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
        items = cfg.items()
        return {k: to_plain(v) for k, v in items}
    if isinstance(cfg, list | tuple):
        return [to_plain(v) for v in cfg]
    return cfg


def _group_file(group: str, name: str, root: Path) -> Path:
    path = root / group / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (root / group).glob("*.yaml"))
        raise ConfigError(f"{group}={name!r}: no file {path}; available: {', '.join(options)}")
    return path


def load_config(
    path: str | Path,
    groups: Mapping[str, str] | None = None,
    overrides: Iterable[str] = (),
    root: Path = CONFIG_ROOT,
) -> ml_collections.FrozenConfigDict:
    """Composes default.yaml, group files, the experiment file and overrides; validates; freezes.

    Args:
      path: experiment YAML file.
      groups: group choices from the command line (e.g. {"model": "conv"}); they replace
        the experiment's `defaults:` entries.
      overrides: 'section.key=value' strings, applied last.
      root: the configs/ folder that holds default.yaml and the group folders.
    """
    schema = read_schema(root)
    experiment = read_yaml(Path(path))
    chosen = experiment.pop("defaults", {}) or {}
    if not isinstance(chosen, dict):
        raise ConfigError(f"{path}: 'defaults' must map a group to a file name, e.g. model: mlp")
    chosen = {**chosen, **{k: v for k, v in (groups or {}).items() if v}}
    tree: dict[str, Any] = {}
    for group, name in chosen.items():
        if group not in GROUPS:
            raise ConfigError(
                f"{path}: unknown config group {group!r}; groups: {', '.join(GROUPS)}"
            )
        tree = deep_merge(tree, read_yaml(_group_file(group, str(name), root)))
    tree = apply_overrides(deep_merge(tree, experiment), overrides)
    return freeze(validate(tree, schema))


def apply_overrides(tree: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Merges 'section.key=value' overrides into a config tree (validation comes after)."""
    out = dict(tree)
    for text in overrides:
        key, value = parse_override(text)
        out = deep_merge(out, nest(key, value))
    return out


def load_saved_config(
    path: str | Path, overrides: Iterable[str] = (), root: Path = CONFIG_ROOT
) -> ml_collections.FrozenConfigDict:
    """Loads a run's config.yaml (already resolved), applies overrides, validates it against the
    current schema."""
    tree = apply_overrides(read_yaml(Path(path)), overrides)
    return freeze(validate(tree, read_schema(root)))


def changed_keys(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old value, new value)} for every leaf where two configs differ."""
    old, new = to_plain(old), to_plain(new)
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return {} if old == new else {prefix.rstrip("."): (old, new)}
    out: dict[str, tuple[Any, Any]] = {}
    for key in [*old, *(k for k in new if k not in old)]:
        out.update(changed_keys(old.get(key), new.get(key), f"{prefix}{key}."))
    return out


def save_config(cfg: ml_collections.FrozenConfigDict, path: str | Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(to_plain(cfg), sort_keys=False))


def config_hash(cfg: ml_collections.FrozenConfigDict) -> str:
    """Short content hash of the resolved config, stable across key order."""
    text = json.dumps(to_plain(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
