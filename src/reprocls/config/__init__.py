"""The recipe: a typed schema (schema.py, every key with a one-line help) and its reading (loading.py)."""

from reprocls.config.loading import (ConfigError, Recipe, apply_overrides, build, describe_keys, dump, explicit_keys,
                                     find_config, flatten, get_key, load_config, load_recipe, parse_override,
                                     parse_yaml, read_recipe, read_yaml_file, registry_keys, resolve, set_key, short, shipped_configs,
                                     strip_optional, to_dict, validate)
from reprocls.config.schema import (AugmentConfig, DataConfig, EvalConfig, ModelConfig, OptimConfig, ReferenceConfig,
                                    RunConfig, ScheduleConfig, TrainConfig)

__all__ = [
    "AugmentConfig", "ConfigError", "DataConfig", "EvalConfig", "ModelConfig", "OptimConfig", "Recipe", "ReferenceConfig",
    "RunConfig", "ScheduleConfig", "TrainConfig", "apply_overrides", "build", "describe_keys", "dump", "explicit_keys",
    "find_config", "flatten", "get_key", "load_config", "load_recipe", "parse_override", "parse_yaml", "read_recipe", "read_yaml_file", "registry_keys",
    "resolve", "set_key", "short", "shipped_configs", "strip_optional", "to_dict", "validate",
]
