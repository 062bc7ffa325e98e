"""A recipe turned into objects, in one place: names checked, seeds set, data loaded, the model built, the learning
rate planned, the optimizer, schedule, loss, scaler and weight average made, and the model wrapped for
SyncBatchNorm, DDP and torch.compile. Every command that trains, evaluates, checks or compresses a recipe asks this
module, so they all build the same thing from the same recipe."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reprocls.config import ConfigError, RunConfig, get_key, registry_keys, short, to_dict
from reprocls.data import DATASETS, load_dataset
from reprocls.data.augment import POLICIES
from reprocls.data.datasets import DatasetSplits
from reprocls.data.transforms import Preprocessing
from reprocls.engine import (OPTIMIZERS, SCHEDULERS, Trainee, TrainSettings, build_optimizer, build_scheduler,
                             resolve_channels_last, resolve_device, resolve_precision, scaled_lr)
from reprocls.engine.distributed import World
from reprocls.engine.ema import create_ema
from reprocls.engine.selfsup.methods import build_method
from reprocls.models import MODELS, create_model, warn_if_input_too_small
from reprocls.models._init import INITS, NO_INIT
from reprocls.models._stages import Stage, model_stages
from reprocls.models._weights import WeightsReport, weights_preprocessing
from reprocls.registry import Registry, suggest

# The registries a recipe key picks from, by the kind its schema field names (config.opt(members=...)).
REGISTRIES: dict[str, Registry] = {registry.kind: registry for registry in (MODELS, DATASETS, SCHEDULERS, OPTIMIZERS, POLICIES,
                                                                                       INITS)}
NO_POLICY = "none"


def members(kind: str) -> list[str]:
    """The names a registry-backed key accepts now (what `reprocls config` lists beside the key)."""
    names = REGISTRIES[kind].names()
    none = {POLICIES.kind: NO_POLICY, INITS.kind: NO_INIT}.get(kind)
    return [none, *names] if none else names


class DataShape(Protocol):
    """What a model must be sized for: DatasetSplits has it, and so do a dataset's registered facts."""

    num_classes: int
    in_chans: int
    image_size: int


@dataclass(frozen=True)
class Shape:
    """A DataShape written out, for building a model without loading its data."""

    num_classes: int
    in_chans: int
    image_size: int


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_IMPORTED: dict[str, str] = {}  # model.module -> the module name it was imported as


def import_user_module(spec: str) -> None:
    """Import a user's Python file (my_models.py, relative to the working folder) or module (my_pkg.models), so the
    builders it registers with @register_model exist; importing the same file again reuses the first import."""
    if spec in _IMPORTED:
        return
    path = Path(spec).expanduser()
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise ConfigError(f"model.module: {spec} is not a file; give a .py file's path or an importable module name")
            name = f"reprocls_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
            loader_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader_spec)  # type: ignore[arg-type]
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            name = spec
            importlib.import_module(spec)
    except ConfigError:
        raise
    except ModuleNotFoundError as error:
        raise ConfigError(f"model.module: cannot import {spec!r} ({error}); is it on PYTHONPATH, or a .py file?") from None
    except Exception as error:  # the user's own code failed: say where, keep the rest of its traceback out
        raise ConfigError(f"model.module: importing {spec} failed with {type(error).__name__}: {error}") from None
    _IMPORTED[spec] = name


def check_names(config: RunConfig) -> None:
    """Fail before any work when a key names an unknown model, dataset, schedule, optimizer or policy, naming the key
    and the nearest registered names (after importing model.module, whose builders may be named)."""
    if config.model.module:
        import_user_module(config.model.module)
    values = to_dict(config)
    for key, kind in registry_keys().items():
        value = get_key(values, key.split("."))
        if kind == "model" and "/" in value:
            continue  # timm/<name> or torchvision/<name>: that library checks the name
        choices = members(kind)
        if value not in choices:
            raise ConfigError(f"{key}: {short(value)} is not one of the registered {kind}s ({', '.join(choices)})."
                              f"{suggest(value[:60], choices)}")
    if config.train.compile:
        from torch._dynamo import list_backends

        backends = sorted(set(list_backends()) | {"inductor", "aot_eager", "eager"})
        if config.train.compile_backend not in backends:
            raise ConfigError(f"train.compile_backend: {short(config.train.compile_backend)} is not a torch.compile "
                              f"backend ({', '.join(backends)}).{suggest(config.train.compile_backend[:60], backends)}")


def model_kwargs(config: RunConfig, shape: DataShape) -> dict[str, Any]:
    """The builder's keyword arguments: the recipe's model.kwargs, sized for the data's classes, channels and (for
    token-grid models) image size."""
    kwargs = dict(config.model.kwargs)
    kwargs.update(num_classes=shape.num_classes, in_chans=config.model.in_chans or shape.in_chans)
    name = config.model.name
    if "/" not in name and name in MODELS and "img_size" in inspect.signature(MODELS.get(name)).parameters:
        kwargs.setdefault("img_size", shape.image_size)
    return kwargs


def build_model(config: RunConfig, shape: DataShape, *, meta: bool = False) -> nn.Module:
    """The recipe's model sized for the data. `meta`: on the meta device, for looking at its structure without
    memory or weights (the doctor); otherwise the recipe's weights are loaded and one tiny forward proves the model
    takes the data's image size."""
    kwargs = model_kwargs(config, shape)
    name = config.model.name
    try:
        if meta:
            try:
                with torch.device("meta"):
                    return create_model(name, **kwargs)
            except (RuntimeError, NotImplementedError):  # an initialiser without a meta kernel: build it for real
                return create_model(name, **kwargs)
        model = create_model(name, weights=config.model.weights, **kwargs)
    except ConfigError:
        raise
    except TypeError as error:
        raise ConfigError(f"model.kwargs: {name} rejected {short(kwargs)}: {short(str(error))}") from None
    except ValueError as error:
        if not meta:
            raise ConfigError(f"model.kwargs: {name} cannot be built with {short(kwargs)}: {short(str(error))}") from None
        raise ConfigError(f"model.name: {name} cannot be built for {shape.image_size} px inputs ({error}); set "
                          "data.image_size to a size it accepts, or pick a small-image variant") from None
    warn_if_input_too_small(model, shape.image_size)
    check_input_fits(model, name, kwargs["in_chans"], shape.image_size)
    return model


def check_input_fits(model: nn.Module, name: str, in_chans: int, image_size: int) -> None:
    """One tiny forward before training, so a model that cannot take the data's image size fails at once."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size))
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"model.name: {name} cannot take {in_chans}x{image_size}x{image_size} inputs ({error}). "
                          "Set data.image_size to a size it accepts, or pick a small-image variant.") from None
    finally:
        model.train(was_training)


@dataclass
class Session:
    """Everything built from a recipe before training: device, precision, memory format, data and model, and what
    the pretrained weights brought (which tensors loaded, which preprocessing they asked for)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    splits: DatasetSplits
    model: nn.Module
    weights: WeightsReport | None = None
    preprocessing: Preprocessing | None = None
    init: str | None = None  # what model.init did, for the log


def pretrained_preprocessing(config: RunConfig) -> Preprocessing | None:
    """What the recipe's pretrained weights expect of their inputs (None when training from scratch)."""
    if config.model.weights is None and not config.model.kwargs.get("pretrained"):
        return None
    try:
        found = weights_preprocessing(config.model.name, config.model.weights)
    except FileNotFoundError:
        return None  # building the model names the missing file
    return Preprocessing(**found) if found else None


def prepare(config: RunConfig, device: torch.device | None = None) -> Session:
    """Validate names, seed, load data and build the model: everything that can fail does so here, before training."""
    check_names(config)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.seed)
    device = device or resolve_device(config.train.device)
    preprocessing = pretrained_preprocessing(config)
    splits = load_dataset(config.data, config.seed, preprocessing)
    model = build_model(config, splits)
    init = initialise_from_data(config, splits, model)
    channels_last = resolve_channels_last(config.train.channels_last, model)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return Session(device, resolve_precision(config.train.precision, device), channels_last, splits, model,
                   getattr(model, "weights_report", None), preprocessing, init)


def initialise_from_data(config: RunConfig, splits: DatasetSplits, model: nn.Module) -> str | None:
    """model.init on the first model.init_images training images, normalised as the model will see them."""
    if config.model.init == NO_INIT:
        return None
    if config.model.weights is not None:
        raise ConfigError(f"model.init: {config.model.init} and model.weights both set the weights; the weights file "
                          "already initialises the model, so set model.init: none")
    images = getattr(splits.train, "images", None)
    if images is None:
        raise ConfigError(f"model.init: {config.model.init} looks at training images held in memory; "
                          f"{config.data.name} is read from files here, so set data.in_memory: yes or model.init: none")
    sample = images[:config.model.init_images].float().div(255)
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    try:
        return INITS.get(config.model.init)(model, (sample - mean) / std)
    except ValueError as error:
        raise ConfigError(f"model.init: {config.model.init} does not fit {config.model.name}: {error}") from None


def lr_plan(config: RunConfig, world: World) -> dict[str, Any]:
    """The effective batch and the learning rate scaled to it, with the arithmetic spelled out for the log."""
    batch = config.data.batch_size * world.world_size
    lr = scaled_lr(config.optim, batch)
    reference = config.optim.lr_reference_batch
    rule = (f"{config.optim.lr:g} x {batch}/{reference} ({config.optim.lr_scaling} rule)" if reference
            else f"{config.optim.lr:g} as given (set optim.lr_reference_batch to rescale it with the batch)")
    micro = config.data.batch_size // config.train.accum_steps
    split = f", {config.train.accum_steps} micro-batches of {micro}" if config.train.accum_steps > 1 else ""
    text = f"lr {lr:g} = {rule} for effective batch {batch} ({world.world_size} process(es) x {config.data.batch_size}{split})"
    return {"lr": lr, "effective_batch": batch, "processes": world.world_size, "accum_steps": config.train.accum_steps,
            "micro_batch": micro, "text": text}


def class_weights(config: RunConfig, splits: DatasetSplits | None) -> torch.Tensor | None:
    """train.class_weights as a tensor: 'balanced' is n / (classes x n_class) over the training labels."""
    setting = config.train.class_weights
    if setting == "none" or splits is None:
        return None
    if setting == "balanced":
        counts = torch.bincount(splits.train.labels, minlength=splits.num_classes).double()
        return (counts.sum() / (splits.num_classes * counts.clamp_min(1))).float()
    if len(setting) != splits.num_classes:
        raise ConfigError(f"train.class_weights: {len(setting)} weights for {splits.num_classes} classes {splits.classes}")
    return torch.tensor(setting, dtype=torch.float32)


def build_criterion(config: RunConfig, splits: DatasetSplits | None = None, device: torch.device | None = None) -> nn.Module:
    """Cross-entropy with the recipe's label smoothing and class weights (soft MixUp/CutMix targets are accepted)."""
    weight = class_weights(config, splits)
    return nn.CrossEntropyLoss(weight=weight.to(device) if weight is not None and device is not None else weight,
                               label_smoothing=config.train.label_smoothing)


@dataclass
class FineTuning:
    """How a model is fine-tuned: the stages the recipe freezes, the ones frozen only during the head-only warm-up,
    and each stage's learning-rate multiplier."""

    stages: list[Stage]
    head: Stage
    frozen: int  # the first `frozen` stages never train
    lr_scales: dict[str, float] = field(default_factory=dict)  # parameter name -> multiplier of optim.lr

    def trainable(self, model: nn.Module) -> int:
        """Parameters that train (after any head-only warm-up)."""
        return sum(stage.size(model) for stage in self.stages[self.frozen:]) + self.head.size(model)

    def record(self, model: nn.Module) -> dict[str, Any]:
        """What results.json keeps about it."""
        return {"frozen_stages": [stage.name for stage in self.stages[:self.frozen]], "trainable_params": self.trainable(model),
                "total_params": sum(p.numel() for p in model.parameters()), "text": self.text(model)}

    def text(self, model: nn.Module) -> str:
        """One line for the console: how many parameters train, what is frozen, the lr multipliers."""
        total = sum(p.numel() for p in model.parameters())
        trainable = self.trainable(model)
        frozen = [stage.name for stage in self.stages[:self.frozen]]
        words = [f"trainable parameters: {trainable:,} of {total:,}"]
        if frozen:
            words.append(f"frozen: {', '.join(frozen)}")
        scales = sorted(set(self.lr_scales.values()))
        if scales and scales != [1.0]:
            words.append(f"lr x {scales[0]:.3g} .. x {scales[-1]:.3g} by stage")
        return "; ".join(words) + f" (stages: {', '.join(s.name for s in self.stages)}, head)"


def fine_tuning(config: RunConfig, model: nn.Module) -> FineTuning:
    """The recipe's freezing and per-stage learning rates for `model` (model.freeze, optim.head_lr_factor,
    optim.layer_decay), refusing a freeze deeper than the model has stages."""
    stages, head = model_stages(model)
    freeze = config.model.freeze
    frozen = len(stages) if freeze == "backbone" else 0 if freeze == "none" else int(freeze)
    if frozen > len(stages):
        raise ConfigError(f"model.freeze: {freeze} stages, but {config.model.name} has {len(stages)} "
                          f"({', '.join(s.name for s in stages)}); use backbone to freeze them all")
    scales: dict[str, float] = {}
    decay = config.optim.layer_decay
    for index, stage in enumerate(stages):
        for name in stage.parameters:
            scales[name] = decay ** (len(stages) - index) if decay else 1.0
    for name in head.parameters:
        scales[name] = config.optim.head_lr_factor
    return FineTuning(stages, head, frozen, scales)


def build_trainee(config: RunConfig, session: Session, lr: float, steps_per_epoch: int) -> Trainee:
    """The model with its optimizer at `lr` (from lr_plan, per stage as fine_tuning says), its schedule over
    steps_per_epoch optimizer steps, the loss, a GradScaler for fp16, the EMA copy when the recipe keeps one, and
    the parameters and BatchNorm layers that freezing and the head-only warm-up hold still."""
    model = session.model
    tuning = fine_tuning(config, model)
    named = dict(model.named_parameters())
    frozen = [named[name] for stage in tuning.stages[:tuning.frozen] for name in stage.parameters]
    for parameter in frozen:
        parameter.requires_grad_(False)
    warm = [named[name] for stage in tuning.stages[tuning.frozen:] for name in stage.parameters] \
        if config.train.head_only_epochs else []
    optimizer = build_optimizer(model, config.optim, lr, lr_scales=tuning.lr_scales)
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch)
    scaler = torch.amp.GradScaler(session.device.type) if session.amp_dtype == torch.float16 else None
    ema = create_ema(model, config.train.ema_decay, config.train.ema_warmup) if config.train.ema_decay else None
    criterion = build_criterion(config, session.splits, session.device)
    return Trainee(model, optimizer, scheduler, criterion, scaler, ema, frozen_norms=_norms_of(model, frozen),
                   warmup_params=tuple(warm), warmup_norms=_norms_of(model, warm))


def _norms_of(model: nn.Module, parameters: list[nn.Parameter]) -> tuple[nn.Module, ...]:
    """The BatchNorm layers whose parameters are all among `parameters`: held in eval mode while those are frozen,
    so their running statistics stay as loaded."""
    held = {id(p) for p in parameters}
    return tuple(module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
                 and any(True for _ in module.parameters()) and all(id(p) in held for p in module.parameters()))


def train_settings(config: RunConfig, session: Session, *, progress: bool = True) -> TrainSettings:
    """The loop's settings as the recipe states them, on the session's device and precision."""
    train = config.train
    return TrainSettings(device=session.device, amp_dtype=session.amp_dtype, num_classes=session.splits.num_classes,
                         epochs=config.schedule.epochs, accum_steps=train.accum_steps,
                         head_only_epochs=train.head_only_epochs,
                         grad_clip_norm=train.grad_clip_norm, on_nonfinite=train.on_nonfinite,
                         eval_every=train.eval_every, checkpoint_every=train.checkpoint_every,
                         log_every=train.log_every, progress=progress)


def wrap_for_training(model: nn.Module, config: RunConfig, world: World, device: torch.device) -> nn.Module:
    """SyncBatchNorm, DistributedDataParallel and torch.compile around the model, as the recipe asks."""
    if config.train.sync_batchnorm and world.distributed:
        if device.type != "cuda":
            raise ConfigError("train.sync_batchnorm: torch's SyncBatchNorm runs only on CUDA; set it to false on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if world.distributed and config.train.head_only_epochs:
        raise ConfigError("train.head_only_epochs: DistributedDataParallel cannot change which parameters train "
                          "mid-run; under torchrun, train the head alone in a first run (model.freeze: backbone) and "
                          "start the second from its weights")
    if world.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.train.compile:
        model = torch.compile(model, backend=config.train.compile_backend)
    return model


def build_pretraining(config: RunConfig, session: Session) -> nn.Module:
    """The pretrain: block's method around the session's backbone (its classifier becomes an identity)."""
    block = config.pretrain
    if block is None:
        raise ConfigError("pretrain: this recipe has no pretrain: block; add one (method: simclr | moco_v2 | byol), "
                          "e.g. configs/fashion_mnist/simclr_resnet20.yaml")
    settings: dict[str, Any] = {"hidden": block.hidden, "out": block.out}
    if block.method != "byol" and block.temperature is not None:
        settings["temperature"] = block.temperature
    if block.method == "moco_v2":
        settings["queue_size"] = block.queue_size
    if block.method == "byol":
        settings["predictor_hidden"] = block.predictor_hidden
    return build_method(block.method, session.model, **settings).to(session.device)
