"""YAML configs -> validated, frozen ml_collections configs.

Composition order (later wins): configs/default.yaml, the group files an experiment
names under `defaults:` (e.g. configs/model/mlp.yaml), the experiment file itself,
then command-line overrides `training.lr=3e-4`. default.yaml is the schema: every
other source may only set keys that exist there, with a value of the same type.

Hand-written rather than pydantic, jsonschema or absl's config_flags: those need the schema
stated a second time (classes, a JSON schema, a Python config file), while here the YAML file
that holds the defaults is the schema, and errors name the key, the file and what is accepted.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_collections
import yaml

from src.utils.errors import ConfigError
from src.utils.io import atomic_write_text

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
GROUPS = ("model", "data")

# Value constraints checked after composition; the defaults themselves live in YAML.
POSITIVE = {
    "model.latent_dim",
    "model.hidden_dim",
    "model.transformer.depth",
    "model.transformer.heads",
    "model.transformer.mlp_ratio",
    "model.transformer.patch_size",
    "model.transformer.init_std",
    "model.hierarchical.depth",
    "model.hierarchical.conv.bottleneck",
    "model.hierarchical.conv.kernel_size",
    "model.gaussian.fixed_scale",
    "model.gaussian.min_scale",
    "training.kl.cycle_steps",
    "training.epochs",
    "training.batch_size",
    "training.lr",
    "logging.every_steps",
    "eval.every_steps",
    "eval.batch_size",
    "eval.iwae_samples",
    "eval.iwae_chunk",
    "eval.mi_samples",
    "eval.figure_images",
    "eval.traversal_dims",
    "eval.traversal_steps",
    "eval.traversal_range",
    "checkpoint.every_steps",
    "checkpoint.keep_last",
    "training.steps_per_call",
    "training.iwae_samples",
    "data.device_memory_fraction",
    "data.prefetch",
    "data.synthetic.num_examples",
    "data.synthetic.latent_dim",
    "data.synthetic.lengthscale",
    "profile.num_steps",
}
NON_NEGATIVE = {
    "training.kl.beta",
    "training.skip_grad_norm",
    "training.kl.warmup_steps",
    "training.kl.free_bits",
    "optimizer.weight_decay",
    "optimizer.eps",
    "optimizer.momentum",
    "optimizer.warmup_steps",
    "optimizer.grad_clip_norm",
    "eval.active_threshold",
    "parallel.num_devices",
    "data.synthetic.noise_std",
    "parallel.num_processes",
    "compile.min_compile_secs",
    "logging.record_every_secs",
    "profile.start_step",
}
PROBABILITY = {
    "data.val_fraction",
    "data.test_fraction",
    "data.device_memory_fraction",
    "optimizer.b1",
    "optimizer.b2",
    "optimizer.end_lr_fraction",
    "training.kl.cycle_ramp",
    "training.max_skipped_fraction",
    "eval.kl_mass_share",
}
CHOICES = {
    "model.type": ("mlp", "conv", "transformer", "hierarchical"),
    "model.hierarchical.structure": ("bottom_up", "top_down"),
    "model.hierarchical.body": ("mlp", "conv"),
    "model.activation": ("relu", "gelu", "tanh", "elu", "silu"),
    "model.likelihood": ("bernoulli", "gaussian", "categorical"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "model.gaussian.scale": ("fixed", "shared", "per_pixel"),
    "model.transformer.readout": ("mean", "cls"),
    "training.kl.warmup": ("none", "linear", "cyclical"),
    "data.binarize": ("none", "static", "dynamic"),
    "data.on_device": ("auto", "true", "false"),
    "data.synthetic.kind": ("linear", "manifold"),
    "optimizer.type": ("adam", "adamw", "sgd"),
    "optimizer.schedule": ("constant", "warmup_cosine"),
    "checkpoint.best_mode": ("max", "min"),
    "parallel.backend": ("jit", "shard_map", "pmap"),
    "training.nan_policy": ("stop", "skip"),
    "training.objective": ("elbo", "iwae"),
    "training.iwae_gradient": ("standard", "dreg"),
    "parallel.distributed": ("auto", "true", "false"),
}
# String keys that also accept a YAML bool, stored as "true" / "false" (e.g. on_device: auto|true|false).
BOOL_AS_STR = {"data.on_device", "parallel.distributed"}


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


def _coerce(key: str, value: Any, default: Any, schema: Mapping[str, Any]) -> Any:
    """Checks value against the type of its default; returns it converted where lossless."""
    if isinstance(default, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_type_name(value)} {value!r}")
        out = {}
        for sub, sub_value in value.items():
            path = f"{key}.{sub}" if key else str(sub)
            if sub not in default:
                raise ConfigError(f"unknown config key {path!r}{unknown_key_hint(path, schema)}")
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
        if isinstance(value, bool) and key in BOOL_AS_STR:
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
    heads = model["transformer"]["heads"]
    if model["hidden_dim"] % heads:
        raise ConfigError(
            f"model.hidden_dim ({model['hidden_dim']}) must be divisible by "
            f"model.transformer.heads ({heads})"
        )
    if not 0.0 <= model["transformer"]["dropout"] < 1.0:
        raise ConfigError(
            f"model.transformer.dropout must be in [0, 1), got {model['transformer']['dropout']}"
        )
    gaussian = model["gaussian"]
    if gaussian["scale"] != "fixed" and gaussian["fixed_scale"] <= gaussian["min_scale"]:
        raise ConfigError(
            f"model.gaussian.fixed_scale ({gaussian['fixed_scale']}) must exceed "
            f"model.gaussian.min_scale ({gaussian['min_scale']}) for a learned scale"
        )
    if model["categorical"]["levels"] < 2:
        raise ConfigError(
            f"model.categorical.levels must be >= 2, got {model['categorical']['levels']}"
        )


def check_values(cfg: Mapping[str, Any]) -> None:
    """Range and choice checks that a type check cannot express."""
    for key in _flat_keys(cfg):
        value = _get(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
    for key in sorted(POSITIVE):
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {_get(cfg, key)!r}")
    for key in sorted(NON_NEGATIVE):
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {_get(cfg, key)!r}")
    for key in sorted(PROBABILITY):
        if not 0.0 <= _get(cfg, key) <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {_get(cfg, key)!r}")
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}: {_get(cfg, key)!r} is not one of {', '.join(allowed)}")
    check_model(cfg["model"])
    kl = cfg["training"]["kl"]
    if kl["warmup"] == "linear" and kl["warmup_steps"] == 0:
        raise ConfigError("training.kl.warmup_steps must be > 0 when training.kl.warmup is linear")
    if kl["cycle_ramp"] == 0:
        raise ConfigError("training.kl.cycle_ramp must be in (0, 1], got 0")
    check_objective(cfg["training"])
    check_hierarchical(cfg["model"], cfg["training"], cfg["eval"])
    decay = cfg["training"]["ema"]["decay"]
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"training.ema.decay must be in [0, 1) (0 = off), got {decay!r}")
    if cfg["parallel"]["process_id"] < -1:
        raise ConfigError(
            f"parallel.process_id must be >= 0, or -1 to detect it; got {cfg['parallel']['process_id']}"
        )
    if cfg["data"]["val_fraction"] + cfg["data"]["test_fraction"] >= 1.0:
        raise ConfigError("data.val_fraction + data.test_fraction must be < 1")
    check_data_values(cfg["data"])
    synthetic = cfg["data"]["synthetic"]
    likelihood = cfg["model"]["likelihood"]
    if (
        cfg["data"]["name"] == "synthetic"
        and synthetic["kind"] == "linear"
        and likelihood in ("bernoulli", "categorical")
    ):
        raise ConfigError(
            f"data.synthetic.kind=linear gives real-valued (PPCA) data, but model.likelihood="
            f"{likelihood} needs values in [0, 1]; use data.synthetic.kind=manifold or a Gaussian likelihood"
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


def validate(tree: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Type-checks tree against schema (which supplies missing keys) and checks value ranges."""
    full = deep_merge(schema, _coerce("", tree, schema, schema))
    check_values(full)
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
    schema = read_yaml(root / "default.yaml")
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
    return freeze(validate(tree, read_yaml(root / "default.yaml")))


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
