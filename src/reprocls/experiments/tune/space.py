"""Search spaces: a YAML mapping of recipe keys to ranges or choices, every key, bound and choice checked against the
recipe schema before a trial starts, and turned into Optuna distributions."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from reprocls.config import (ConfigError, RunConfig, build, describe_keys, find_config, get_key, read_yaml_file, set_key,
                             strip_optional, to_dict)
from reprocls.recipe import check_names
from reprocls.registry import suggest

FREE_FORM = "model.kwargs."  # builder arguments: any name, typed by the values given


def load_space(path: str | Path) -> dict[str, BaseDistribution]:
    """Read a search space YAML file: recipe key -> range or choices."""
    path = find_config(path, "--space", "search")  # a file, or a shipped space by name: resnet20_lr_wd
    raw = read_yaml_file(path, "--space")
    return parse_space(raw, str(path))


def parse_space(raw: Any, source: str = "search space") -> dict[str, BaseDistribution]:
    """Distributions keyed by dotted recipe key, every bound and choice checked against the recipe schema."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: expected a mapping of recipe keys to distributions, e.g. "
                          "'optim.lr: {low: 0.01, high: 0.5, log: true}' or 'data.batch_size: [64, 128, 256]'")
    if "space" in raw:
        raise ConfigError(f"{source}: space: {raw['space']} makes this an architecture space: search it with reprocls "
                          "nas RECIPE --space FILE --budget-macs M --trials N")
    return {str(key): parse_distribution(str(key), spec, source) for key, spec in raw.items()}


def key_type(key: str, source: str = "search space") -> Any:
    """The schema's type of a dotted recipe key (None for free-form model.kwargs.<name>); unknown keys fail."""
    if key.startswith(FREE_FORM) and len(key) > len(FREE_FORM) and "." not in key[len(FREE_FORM):]:
        return None
    known = [path for path, _, _ in describe_keys()]
    if key not in known:
        raise ConfigError(f"{source}: unknown recipe key {key!r}.{suggest(key, known)} `reprocls config` lists every key; "
                          f"model builder arguments go under {FREE_FORM}<name>")
    node: Any = RunConfig
    for part in key.split("."):
        node = strip_optional(typing.get_type_hints(node)[part])[0]
    if dataclasses.is_dataclass(node):
        raise ConfigError(f"{source}: {key!r} is a section, not a value; search one of its keys, e.g. {key}.<key> "
                          "(`reprocls config` lists them)")
    return node


def check_value(key: str, value: Any, source: str) -> Any:
    """One candidate value checked (and coerced, e.g. 1 -> 1.0 for a float key) by the recipe schema itself."""
    if key.startswith(FREE_FORM):
        return value
    raw: dict[str, Any] = {}
    set_key(raw, key.split("."), value)
    try:
        config = build(RunConfig, raw)
        check_names(config)
        return get_key(to_dict(config), key.split("."))
    except ConfigError as error:
        raise ConfigError(f"{source}: {key}: {value!r} cannot be tried ({error})") from None


def parse_distribution(key: str, spec: Any, source: str = "search space") -> BaseDistribution:
    """`[a, b]` or `{choices: [a, b]}` -> categorical; `{low, high, log?, step?}` -> int or float range by key type."""
    hint = key_type(key, source)
    where = f"{source}: {key}"
    if isinstance(spec, dict) and "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(f"{where}: a choices mapping takes no other fields (got {sorted(set(spec) - {'choices'})})")
        spec = spec["choices"]
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: the list of choices is empty; list at least one value")
        values = [check_value(key, value, source) for value in spec]
        for value in values:
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise ConfigError(f"{where}: choice {value!r} is not a single number, string or boolean "
                                  "(Optuna stores choices as scalars)")
        if len({json.dumps(value) for value in values}) < len(values):
            raise ConfigError(f"{where}: the choices {spec} repeat a value; list each once")
        return CategoricalDistribution(values)
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {spec!r} is not a distribution; give a range {{low: 0.01, high: 0.5, log: true}} "
                          "(optional step) or a list of choices [64, 128, 256]")
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; a range is {{low, high}} with optional log: true "
                          "or step, and a set of values is a list or {choices: [...]}")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high, e.g. {{low: 0.01, high: 0.5}}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    numbers = [value for value in (low, high, step) if value is not None]
    if any(isinstance(value, bool) or not isinstance(value, (int, float)) for value in numbers):
        raise ConfigError(f"{where}: low, high and step must be numbers (got {spec})")
    if hint is None:
        hint = int if all(isinstance(value, int) for value in numbers) else float
    if hint not in (int, float):
        example = "[true, false]" if hint is bool else "[a, b]"
        raise ConfigError(f"{where}: the key is not a number, so it takes a list of choices instead of a range, "
                          f"e.g. {key}: {example}")
    if hint is int and not all(isinstance(value, int) for value in numbers):
        raise ConfigError(f"{where}: the key is an integer, so low, high and step must be integers (got {spec})")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false (got {log!r})")
    if low >= high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high}); to fix a key for every trial, "
                          "pass it as an override instead")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0 (got {low}); use a linear range or a positive low")
    if log and step is not None:
        raise ConfigError(f"{where}: log and step cannot be combined; drop one of them")
    if step is not None:
        if step <= 0:
            raise ConfigError(f"{where}: step must be > 0 (got {step})")
        count = (high - low) / step
        if abs(count - round(count)) > 1e-9 * max(1.0, count):
            raise ConfigError(f"{where}: high - low ({high - low:g}) is not a whole number of steps of {step:g}; "
                              "pick bounds a multiple of the step apart")
    check_value(key, low, source)
    check_value(key, high, source)
    if hint is int:
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(float(low), float(high), log=log, step=float(step) if step is not None else None)


def describe_distribution(distribution: BaseDistribution) -> str:
    """A distribution in words, for the terminal and the report."""
    if isinstance(distribution, CategoricalDistribution):
        return "one of " + ", ".join(json.dumps(choice) for choice in distribution.choices)
    kind = "integer" if isinstance(distribution, IntDistribution) else "real"
    scale = "log-uniform " if distribution.log else ""
    step = f" in steps of {distribution.step:g}" if distribution.step not in (None, 1) else ""
    return f"{scale}{kind} in [{distribution.low:g}, {distribution.high:g}]{step}"


def grid_points(space: dict[str, BaseDistribution]) -> dict[str, list[Any]]:
    """Every value the grid sampler tries per key: lists as given, integer ranges and stepped ranges expanded."""
    grid: dict[str, list[Any]] = {}
    for key, distribution in space.items():
        if isinstance(distribution, CategoricalDistribution):
            grid[key] = list(distribution.choices)
        elif isinstance(distribution, IntDistribution) and not distribution.log:
            grid[key] = list(range(distribution.low, distribution.high + 1, distribution.step))
        elif isinstance(distribution, FloatDistribution) and distribution.step is not None:
            count = round((distribution.high - distribution.low) / distribution.step)
            grid[key] = [round(distribution.low + i * distribution.step, 12) for i in range(count + 1)]
        else:
            raise ConfigError(f"--sampler grid: {key} is a continuous range ({describe_distribution(distribution)}), which a grid cannot "
                              f"enumerate; list the values to try (e.g. {key}: [a, b, c]), give the range a step, "
                              "or use --sampler tpe / random")
    return grid


def suggest_param(trial: optuna.Trial, key: str, distribution: BaseDistribution) -> Any:
    """The trial's value for one key, drawn through the suggest call Optuna's samplers expect for its type."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    return trial.suggest_float(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def reachable_values(distribution: BaseDistribution) -> list[Any]:
    """The values a key's distribution can reach at its extremes (all of them for a list of choices)."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]
