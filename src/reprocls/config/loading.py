"""Reading a recipe: YAML plus key=value overrides, checked against the schema key by key (unknown keys and bad values
named by path, with a suggestion), then across keys; the resolved recipe dumped with every run."""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import math
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args, get_origin

import yaml

from reprocls.config.schema import RunConfig
from reprocls.config.yaml_io import FLOAT, YamlProblem, load_yaml
from reprocls.registry import suggest


class ConfigError(ValueError):
    """A recipe key or value that cannot be used; the message names the key path and a fix."""


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 8, 8, 3


def short(value: Any) -> str:
    """A value as an error message may print it: bounded, so a huge or nested value cannot flood the terminal."""
    return _SHORT.repr(value)


def parse_yaml(text: str, source: str) -> Any:
    """A recipe-shaped YAML document (strict: see yaml_io), or a one-line ConfigError naming `source`."""
    try:
        return load_yaml(text)
    except YamlProblem as problem:
        raise ConfigError(f"{source}: {problem}") from None
    except yaml.YAMLError as error:
        first = " ".join(str(error).split())
        raise ConfigError(f"{source} is not valid YAML ({first[:300]})") from None


def read_yaml_file(path: Path, what: str) -> Any:
    """A recipe, plan or space file read strictly; a folder, a binary or unreadable file is one ConfigError line."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; pass a YAML file (`reprocls recipes` lists the shipped ones)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a text file; pass a YAML file") from None
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be read ({error.strerror or error})") from None
    return parse_yaml(text, f"{what} {path}")


def _resolve_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def strip_optional(hint: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) for `X | None`."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else Union[tuple(args)]), len(args) < len(get_args(hint))
    return hint, False


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Check `value` against a type hint, converting only where it is lossless (int -> float)."""
    hint, nullable = strip_optional(hint)
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{path}: a value is required here (got null)")
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    origin = get_origin(hint)
    if origin is Literal:
        choices = list(get_args(hint))
        if isinstance(value, bool) and "yes" in choices:  # YAML reads yes/no as booleans
            value = "yes" if value else "no"
        if value not in choices:
            raise ConfigError(f"{path}: {short(value)} is not one of {choices}.{suggest(str(value)[:60], [str(c) for c in choices])}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {short(value)}")
        (item,) = get_args(hint)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {short(value)}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {short(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {short(value)}")
        if abs(value) > 2**62:
            raise ConfigError(f"{path}: {short(value)} is far too large")
        return value
    if hint is float:
        if isinstance(value, str) and FLOAT.match(value.strip()):  # 1e-3 written where YAML 1.1 sees a string
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {short(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: {value} is not a finite number; give an ordinary number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {short(value)}")
        return value
    return value


def build(cls: type, raw: Any, path: str = "") -> Any:
    """Turn a nested mapping into the dataclass `cls`, rejecting unknown keys and bad values by path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'recipe'}: expected a mapping of keys, got {short(raw)}")
    hints = _resolve_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"unknown key {short(key_path)}.{suggest(str(key)[:60], list(fields))} Valid keys here: {', '.join(fields)}")
        value = _coerce(value, hints[key], key_path)
        check = fields[key].metadata.get("check")
        if check is not None and value is not None and not check(value):
            what = "is not valid" if isinstance(value, str) else "is out of range"
            raise ConfigError(f"{key_path}: {short(value)} {what}; it must be {fields[key].metadata['rule']}")
        values[key] = value
    return cls(**values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=0.05' -> (['optim', 'lr'], 0.05); values are read as YAML scalars or lists."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key.sub=value, e.g. optim.lr=0.05")
    keys = key.strip().split(".")
    if any(not part for part in keys):
        raise ConfigError(f"override {short(text)}: {short(key)} is not a dotted key like optim.lr")
    try:
        return keys, load_yaml(value) if value.strip() else None
    except YamlProblem as problem:
        raise ConfigError(f"override {short(text)}: {problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {short(text)}: the value is not valid YAML ({str(error).splitlines()[0]}); quote the "
                          "whole override for the shell, e.g. 'model.kwargs={dropout: 0.3}'") from None


def set_key(raw: dict[str, Any], keys: list[str], value: Any, *, source: str = "") -> None:
    """Set a nested key (['optim', 'lr']) in a raw recipe mapping, creating sections on the way."""
    node = raw
    for key in keys[:-1]:
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"{source or '.'.join(keys)}: {key!r} is not a section")
    node[keys[-1]] = value


def get_key(raw: dict[str, Any], keys: list[str], default: Any = None) -> Any:
    """A nested key of a raw recipe mapping, or `default` when any level is missing."""
    node: Any = raw
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {dotted key: leaf value}; model.kwargs stays one value, as the schema treats it."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path != "model.kwargs":
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested mapping; validation of the result happens in `build`."""
    for text in overrides:
        keys, value = parse_override(text)
        set_key(raw, keys, value, source=f"override {text!r}")
    return raw


def shipped_configs() -> Path:
    """The folder of recipes, compression plans and search spaces that ship inside the package."""
    return Path(str(importlib.resources.files("reprocls") / "configs"))


def find_config(name: str | Path, what: str = "recipe", folder: str = "") -> Path:
    """A YAML file by path, or by the name of a shipped one ('quickstart', 'fashion_mnist/resnet20',
    'configs/quickstart.yaml' outside a clone); a ConfigError saying how to list them otherwise."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    relative = str(name).removeprefix("configs/").removeprefix(f"{folder}/" if folder else "")
    relative = relative if relative.endswith((".yaml", ".yml")) else f"{relative}.yaml"
    candidate = shipped_configs() / folder / relative
    if candidate.is_file():
        return candidate
    listed = "`reprocls recipes` lists the shipped ones"
    raise ConfigError(f"{what} {name} does not exist as a file or as a shipped name; {listed}")


def read_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The recipe as written plus overrides, before defaults: what the user set explicitly."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = find_config(path)
        raw = read_yaml_file(path, "recipe")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"recipe {path}: expected a mapping of keys (model:, data:, ...), got {type(raw).__name__} "
                              f"{short(raw)}")
    return apply_overrides(raw, list(overrides))


def explicit_keys(raw: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of every key a raw recipe sets, e.g. {'seed', 'optim', 'optim.lr'}."""
    keys = set()
    for key, value in raw.items():
        path = f"{prefix}{key}"
        keys.add(path)
        if isinstance(value, dict) and key != "kwargs":
            keys |= explicit_keys(value, f"{path}.")
    return keys


@dataclass(frozen=True)
class Recipe:
    """A recipe read once: the validated config, the mapping as written plus overrides (what a search varies and a
    best.yaml is built from), the dotted keys the author set (what the doctor may comment on), and where it came from."""

    config: RunConfig
    raw: dict[str, Any]
    explicit: frozenset[str]
    path: str | None = None
    overrides: tuple[str, ...] = ()

    def with_values(self, values: dict[str, Any], **top: Any) -> RunConfig:
        """The recipe with dotted keys set ({'optim.lr': 0.05}) and top-level keys replaced, validated like any recipe."""
        raw = copy.deepcopy(self.raw)
        for key, value in values.items():
            set_key(raw, key.split("."), value)
        raw.update(top)
        return resolve(raw, self.path)


def resolve(raw: dict[str, Any], path: str | Path | None = None) -> RunConfig:
    """Build, fill the run name from the recipe's file name, and check the keys that span sections."""
    config = build(RunConfig, raw)
    if config.name is None:
        config.name = find_config(path).stem if path is not None else "run"
    validate(config)
    return config


def load_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe and key=value overrides once, validated: everything later steps need from it."""
    raw = read_recipe(path, overrides)
    config = resolve(copy.deepcopy(raw), path)
    return Recipe(config, raw, frozenset(explicit_keys(raw)), str(path) if path is not None else None, tuple(overrides))


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML recipe, apply key=value overrides, validate, and fill the run name."""
    return load_recipe(path, overrides).config


def validate(config: RunConfig) -> None:
    """Checks that span several keys, and of the keys that take one of several types."""
    output = Path(config.output_dir).expanduser()  # "~/runs" means the home folder, not a folder named "~"
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output_dir: {config.output_dir} is a file, not a folder; name a folder for the run folders")
    config.output_dir = str(output)
    freeze = config.model.freeze
    if not (freeze in ("none", "backbone") or (isinstance(freeze, int) and not isinstance(freeze, bool) and freeze >= 0)):
        raise ConfigError(f"model.freeze: {freeze!r} must be none, backbone, or a number of stages (0, 1, 2, ...)")
    weights = config.train.class_weights
    if isinstance(weights, list):
        if not weights or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 for w in weights):
            raise ConfigError(f"train.class_weights: {weights!r} must list one positive number per class")
        config.train.class_weights = [float(w) for w in weights]
    elif weights not in ("none", "balanced"):
        raise ConfigError(f"train.class_weights: {weights!r} must be none, balanced or a list of one weight per class"
                          f".{suggest(str(weights), ['none', 'balanced'])}")
    data = config.data
    if len(data.split) != 3 or abs(sum(data.split) - 1.0) > 1e-6:
        raise ConfigError(f"data.split: {data.split} must be three ratios (train, val, test) summing to 1")
    if data.std is not None and any(v <= 0 for v in data.std):
        raise ConfigError(f"data.std: {data.std} must be positive")
    if data.mean is not None and data.std is not None and len(data.mean) != len(data.std):
        raise ConfigError(f"data.mean: {data.mean} and data.std: {data.std} must give one value per channel each")
    if len(config.optim.betas) != 2:
        raise ConfigError(f"optim.betas: {config.optim.betas} must be two numbers")
    scale = data.augment.rrc_scale
    if len(scale) != 2 or scale[0] > scale[1]:
        raise ConfigError(f"data.augment.rrc_scale: {scale} must be [low, high] with low <= high")
    if data.batch_size % config.train.accum_steps:
        raise ConfigError(f"train.accum_steps: {config.train.accum_steps} must divide data.batch_size ({data.batch_size}) "
                          "into equal micro-batches")
    if config.schedule.warmup_epochs >= config.schedule.epochs:
        raise ConfigError(
            f"schedule.warmup_epochs: {config.schedule.warmup_epochs} must be shorter than schedule.epochs ({config.schedule.epochs})"
        )


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config, for YAML and JSON."""
    return dataclasses.asdict(config)


def dump(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config so a run can be reproduced from its folder alone."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


Members = Callable[[str], list[str]]


def describe_keys(cls: type = RunConfig, prefix: str = "", members: Members | None = None) -> list[tuple[str, str, str]]:
    """(key path, default, help) for every key: the schema's own documentation. `members(kind)` lists a registry's
    names; given it, keys that pick a registry entry (model.name, data.name, ...) list the current entries."""
    rows = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        hint, _ = strip_optional(_resolve_hints(cls)[f.name])
        if dataclasses.is_dataclass(hint):
            rows.append((path, "", f.metadata.get("help", "")))
            rows.extend(describe_keys(hint, f"{path}.", members))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        kind = f.metadata.get("members")
        if kind and members is not None:
            help_text += f" ({', '.join(members(kind))})"
        rows.append((path, yaml.safe_dump(default, default_flow_style=True).splitlines()[0], help_text))
    return rows


def registry_keys(cls: type = RunConfig, prefix: str = "") -> dict[str, str]:
    """{dotted key: registry kind} for every key whose value names a registry entry."""
    keys: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        hint, _ = strip_optional(_resolve_hints(cls)[f.name])
        if dataclasses.is_dataclass(hint):
            keys.update(registry_keys(hint, f"{prefix}{f.name}."))
        elif f.metadata.get("members"):
            keys[f"{prefix}{f.name}"] = f.metadata["members"]
    return keys
