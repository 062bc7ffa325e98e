"""The recipe schema: every key typed, documented in one line, validated before any work starts."""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args, get_origin

import yaml

from reprocls.registry import suggest


class ConfigError(ValueError):
    """A recipe key or value that cannot be used; the message names the key path and a fix."""


def opt(default: Any, help: str, *, check: Callable[[Any], bool] | None = None, rule: str = "",
        members: str | None = None) -> Any:
    """A documented config field; `check` validates the value and `rule` says what is allowed; `members` names the
    registry whose entries the value picks (its help then lists them, read from the registry itself)."""
    factory = (lambda: list(default)) if isinstance(default, list) else (lambda: dict(default)) if isinstance(default, dict) else None
    meta = {"help": help, "check": check, "rule": rule, "members": members}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


positive = dict(check=lambda v: v > 0, rule="> 0")
non_negative = dict(check=lambda v: v >= 0, rule=">= 0")
fraction = dict(check=lambda v: 0 <= v < 1, rule="in [0, 1)")


@dataclass
class ModelConfig:
    name: str = opt("resnet20", "registered model name (`reprocls models` lists them) or timm/<name>, torchvision/<name>",
                    members="model")
    in_chans: int | None = opt(None, "input channels; null takes the dataset's (1 for the MNIST family, 3 for CIFAR)")
    kwargs: dict[str, Any] = opt({}, "extra keyword arguments for the model builder, e.g. {dropout: 0.3}")
    weights: str | None = opt(None, "checkpoint (safetensors, or a torchvision/timm .pth) to start from")


@dataclass
class AugmentConfig:
    crop_padding: int = opt(4, "small-image preset: zero-pad by this many pixels, then random-crop back (0: off)", **non_negative)
    hflip: bool = opt(True, "random horizontal flip with probability 0.5")
    random_erasing: float = opt(0.0, "probability of erasing a random rectangle (Zhong et al. 2020; 0.5 in the paper)", check=lambda v: 0 <= v <= 1, rule="in [0, 1]")
    rrc_scale: list[float] = opt([0.08, 1.0], "imagenet preset: RandomResizedCrop area range (Szegedy et al. 2015)")
    color_jitter: float = opt(0.4, "imagenet preset: brightness/contrast/saturation jitter strength (0: off)", **non_negative)
    policy: str = opt("none", "per-image policy from transforms.v2, or none", members="augment policy")
    randaugment_ops: int = opt(2, "randaugment: operations per image (N in Cubuk et al. 2020)", **positive)
    randaugment_magnitude: int = opt(9, "randaugment: magnitude of every operation, 0-30 (M in the paper)", check=lambda v: 0 <= v <= 30, rule="in [0, 30]")
    autoaugment_policy: Literal["imagenet", "cifar10", "svhn"] = opt("imagenet", "autoaugment: which learned policy (Cubuk et al. 2019)")
    mixup_alpha: float = opt(0.0, "MixUp Beta(alpha, alpha) mixing of image pairs with soft targets (Zhang et al. 2018; 0: off)", **non_negative)
    cutmix_alpha: float = opt(0.0, "CutMix box mixing with soft targets (Yun et al. 2019; 0: off); with mixup, one is picked per batch", **non_negative)
    mix_prob: float = opt(1.0, "share of training batches that get MixUp/CutMix", check=lambda v: 0 <= v <= 1, rule="in [0, 1]")
    repeats: int = opt(1, "repeated augmentation: each image appears this many times per batch-ordered epoch (Hoffer et al. 2020; 1: off)", **positive)


@dataclass
class DataConfig:
    name: str = opt("fashion_mnist", "dataset", members="dataset")
    root: str | None = opt(None, "where the data lives; null looks in $REPROCLS_DATA, then ./.data (and /usr/share/datasets)")
    download: bool = opt(False, "download a standard dataset when it is missing (needs a network)")
    val_fraction: float = opt(0.1, "share of the training set held out for validation, stratified and seeded (0: none)", **fraction)
    split: list[float] = opt([0.7, 0.2, 0.1], "image_folder: train/val/test ratios of the stratified split")
    split_file: str | None = opt(None, "image_folder: reuse the splits.json of an earlier run instead of computing one")
    split_seed: int | None = opt(None, "seed of the train/val/test split and of limit_* subsets; null: follow `seed`")
    on_bad_image: Literal["error", "skip"] = opt("error", "image_folder: undecodable files (corrupt, truncated, bombs) stop the run before training (error) or are left out and listed (skip)")
    image_size: int | None = opt(None, "image side in pixels; null keeps the dataset's native size (224 for image_folder)")
    channels: int | None = opt(None, "image channels: null keeps the dataset's (1 MNIST, 3 CIFAR/folders); 1 makes grey, 3 RGB", check=lambda v: v in (1, 3), rule="1 or 3")
    preset: Literal["auto", "small", "imagenet", "none"] = opt("auto", "train augmentation preset; auto: small for <= 64 px, else imagenet")
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={"help": "augmentation settings of the presets"})
    mean: list[float] | None = opt(None, "per-channel normalisation mean; null takes the dataset's known constants")
    std: list[float] | None = opt(None, "per-channel normalisation std; null takes the dataset's known constants")
    in_memory: Literal["auto", "yes", "no"] = opt("auto", "hold images as uint8 tensors and augment whole batches on the device")
    batch_size: int = opt(128, "training images per optimizer step and process (effective batch: this x processes)", **positive)
    eval_batch_size: int = opt(512, "images per evaluation step", **positive)
    workers: int = opt(2, "DataLoader worker processes for file-backed datasets", **non_negative)
    limit_train: int | None = opt(None, "use only the first N (stratified) training images: quick experiments and tests")
    limit_eval: int | None = opt(None, "use only N (stratified) validation and N test images: quick experiments and tests", **positive)


@dataclass
class OptimConfig:
    name: str = opt("sgd", "optimizer", members="optimizer")
    lr: float = opt(0.1, "peak learning rate, for a batch of lr_reference_batch images", **positive)
    lr_reference_batch: int | None = opt(None, "batch size `lr` was tuned for; the actual lr is rescaled to the real batch", **positive)
    lr_scaling: Literal["linear", "sqrt"] = opt("linear", "rule for rescaling lr to the batch (Goyal et al. 2017: linear)")
    momentum: float = opt(0.9, "SGD momentum", **fraction)
    nesterov: bool = opt(False, "SGD with Nesterov momentum")
    betas: list[float] = opt([0.9, 0.999], "AdamW betas")
    weight_decay: float = opt(5e-4, "L2 / decoupled weight decay", **non_negative)
    decay_norm_and_bias: bool = opt(False, "also decay norm weights and biases (most papers do not)")


@dataclass
class ScheduleConfig:
    name: str = opt("cosine", "lr schedule, stepped every optimizer step", members="schedule")
    epochs: int = opt(30, "training epochs", **positive)
    warmup_epochs: float = opt(0.0, "linear warmup length in epochs (may be fractional), before the main schedule", **non_negative)
    warmup_start_factor: float = opt(0.1, "lr at the start of warmup, as a fraction of the peak", check=lambda v: 0 < v <= 1, rule="in (0, 1]")
    min_lr_factor: float = opt(0.0, "cosine/sgdr: final lr as a fraction of the peak", **fraction)
    step_epochs: int = opt(30, "step: decay every this many epochs", **positive)
    milestones: list[int] = opt([], "multistep: epochs at which lr is multiplied by gamma")
    gamma: float = opt(0.1, "step/multistep: lr multiplier at each decay", **positive)
    restart_epochs: int = opt(10, "sgdr: length of the first cosine cycle in epochs (Loshchilov & Hutter 2017)", **positive)
    restart_mult: int = opt(2, "sgdr: each cycle is this many times longer than the previous", **positive)
    pct_start: float = opt(0.25, "onecycle: share of training spent rising to the peak lr", check=lambda v: 0 < v < 1, rule="in (0, 1)")


@dataclass
class TrainConfig:
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where to train; auto picks cuda when available")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt("auto", "autocast dtype; auto: bf16 where the device supports it, else fp32")
    channels_last: Literal["auto", "yes", "no"] = opt("auto", "NHWC memory format; auto: on for convolutional models on CPU and CUDA")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing (Szegedy et al. 2016)", **fraction)
    grad_clip_norm: float | None = opt(None, "clip the global gradient norm to this value", **positive)
    accum_steps: int = opt(1, "split each batch into this many micro-batches and accumulate their gradients (saves memory)", **positive)
    ema_decay: float | None = opt(None, "keep an exponential moving average of the weights with this decay, e.g. 0.9998 (null: off)", **fraction)
    ema_warmup: bool = opt(True, "EMA decay ramps up as min(decay, (1 + t) / (10 + t)) so early averages are not stuck at init")
    compile: bool = opt(False, "torch.compile the model (slower than eager on this 2-core CPU; try it on GPUs)")
    compile_backend: str = opt("inductor", "torch.compile backend (inductor, aot_eager, eager)")
    sync_batchnorm: bool = opt(False, "distributed on GPUs: BatchNorm statistics over all processes' images (SyncBatchNorm)")
    threads: int | None = opt(None, "CPU threads for torch; null leaves torch's default", **positive)
    eval_every: int = opt(1, "evaluate on the validation split every N epochs (and always after the last)", **positive)
    checkpoint_every: int | None = opt(None, "also write a resumable checkpoint every N optimizer steps (always at each epoch end)", **positive)
    keep_checkpoints: int = opt(2, "newest checkpoints kept in <run>/checkpoints, plus the best by validation top-1", **positive)
    on_nonfinite: Literal["stop", "skip"] = opt("stop", "a NaN/inf loss or gradient: stop (naming the step) or skip that step and count it")
    log_every: int = opt(50, "steps between TensorBoard scalars", **positive)


@dataclass
class ReferenceConfig:
    source: str = opt("", "where the reported number comes from (paper, table, benchmark)")
    top1: float = opt(0.0, "reported test top-1 accuracy as a fraction (0.949 for 94.9 %)", check=lambda v: 0 <= v <= 1, rule="in [0, 1]")
    tolerance: float = opt(0.005, "gap to the reported top-1 still counted as reproduced", **non_negative)
    batch_size: int | None = opt(None, "the paper's effective batch (all devices); the doctor checks lr scaling against it", **positive)
    epochs: int | None = opt(None, "the paper's training length in epochs; the doctor flags shorter schedules", **positive)
    norm_weight_decay: bool | None = opt(None, "whether the paper decays norm weights and biases (null: not stated)")


@dataclass
class RunConfig:
    name: str | None = opt(None, "run name; null takes the recipe's file name")
    output_dir: str = opt("runs", "folder that receives runs/<name>-<timestamp>/")
    seed: int = opt(0, "seeds Python, NumPy and torch; the same seed gives the same metrics on CPU")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the architecture"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "dataset, splits, preprocessing and loading"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer and weight decay"})
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig, metadata={"help": "epochs and learning-rate schedule"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "device, precision and loss settings"})
    reference: ReferenceConfig | None = field(default=None, metadata={"help": "the paper's number this recipe should reach"})


# ---------------------------------------------------------------------------------------------- loading


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
            raise ConfigError(f"{path}: {value!r} is not one of {choices}.{suggest(str(value), [str(c) for c in choices])}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = get_args(hint)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type, raw: Any, path: str = "") -> Any:
    """Turn a nested mapping into the dataclass `cls`, rejecting unknown keys and bad values by path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'recipe'}: expected a mapping of keys, got {raw!r}")
    hints = _resolve_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"unknown key {key_path!r}.{suggest(str(key), list(fields))} Valid keys here: {', '.join(fields)}")
        value = _coerce(value, hints[key], key_path)
        check = fields[key].metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise ConfigError(f"{key_path}: {value!r} is out of range; it must be {fields[key].metadata['rule']}")
        values[key] = value
    return cls(**values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=0.05' -> (['optim', 'lr'], 0.05); values are read as YAML scalars or lists."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key.sub=value, e.g. optim.lr=0.05")
    try:
        return key.strip().split("."), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({str(error).splitlines()[0]}); quote the whole "
                          "override for the shell, e.g. 'model.kwargs={dropout: 0.3}'") from None


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


def read_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The recipe as written plus overrides, before defaults: what the user set explicitly."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"recipe {path} does not exist (recipes live under configs/, e.g. configs/quickstart.yaml)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"recipe {path} is not valid YAML: {error}") from None
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
        config.name = Path(path).stem if path is not None else "run"
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
    """Checks that span several keys."""
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
