"""The doctor's checks, one function each: a Context in, the findings about one classic pitfall out."""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2

from reprocls.analysis.doctor.context import CHECKS, Context, Finding, STATS_TOLERANCE
from reprocls.data.datasets import IMAGENET_MEAN, IMAGENET_STD, convert_stats, known_facts
from reprocls.data.loaders import DeviceLoader, Loader
from reprocls.engine import scaled_lr
from reprocls.models import warn_if_input_too_small

MIN_BN_BATCH = 16  # images per BatchNorm batch below which its statistics get noisy (Wu & He 2018, figure 1)
SLOW_BN_HORIZONS = 10  # BatchNorm updates x momentum below this: running statistics still lag the weights


def _same(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= STATS_TOLERANCE for x, y in zip(a, b))


def _numbers(values: tuple[float, ...] | list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}".rstrip("0").rstrip(".") for v in values) + "]"


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())



# ------------------------------------------------------------------------------------------------- checks


@CHECKS.register
def imagenet_stem(context: Context) -> list[Finding]:
    """A stem that downsamples 4-32x before the first block leaves a few pixels of a 28-32 px image to learn from."""
    model, size, name = context.model, context.image_size, context.config.model.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if warn_if_input_too_small(model, size) is None:
            return []
    stride, designed = model.stem_stride, model.designed_input_size
    if hasattr(model, "stem_type"):
        variant = f"model.kwargs: {{stem: cifar}} (a 3x3 stride-1 stem for {name}) or model.name: resnet20"
    elif name.startswith("vit"):
        variant = "model.name: vit_ti_4 (or vit_s_4: 4x4 patches for small images)"
    elif name.startswith("swin"):
        variant = "model.name: swin_t_2 (2x2 patches, 4x4 windows)"
    else:
        variant = "model.name: resnet20 (or another small-image model from `reprocls models`)"
    return [Finding("imagenet_stem", "warning", "model.name",
                    f"{name} downsamples {stride}x in its stem and was designed for {designed} px inputs, but this recipe "
                    f"feeds it {size} px images: the first block sees a {max(1, size // stride)} px map, so most detail "
                    "is gone before anything is learned and accuracy lands well below the paper's",
                    f"use a small-image variant, {variant}; or upscale with data.image_size: 96 (or more) at a higher "
                    "compute cost")]


@CHECKS.register
def normalization(context: Context) -> list[Finding]:
    """Normalisation constants of another dataset (or of the wrong channel count) shift every input the model sees."""
    data, name = context.config.data, context.config.data.name
    if known_facts(name) is None and name != "image_folder" and context.native_splits.eval_transform is not None:
        if data.mean is None and data.std is None:
            return []
        return [Finding("normalization", "info", "data.mean",
                        f"{name} brings its own transforms, so data.mean and data.std are never applied",
                        "remove data.mean and data.std, or normalise inside the dataset's own transforms")]
    channels = context.in_chans
    for key in ("mean", "std"):
        values = getattr(data, key)
        if values is not None and len(values) != channels:
            return [Finding("normalization", "error", f"data.{key}",
                            f"data.{key} has {len(values)} value(s) but {name} images have {channels} channel(s) here; "
                            "loading the data will fail",
                            f"remove data.mean and data.std to use {name}'s own constants, or give {channels} value(s) each")]
    if name == "image_folder":
        mean = tuple(data.mean) if data.mean is not None else convert_stats(IMAGENET_MEAN, channels)
        std = tuple(data.std) if data.std is not None else convert_stats(IMAGENET_STD, channels)
        imagenet = _same(mean, convert_stats(IMAGENET_MEAN, channels)) and _same(std, convert_stats(IMAGENET_STD, channels))
        if context.config.model.weights is not None and imagenet:
            return []  # ImageNet-pretrained weights expect ImageNet constants, whatever the folder holds
        measured = context.measured_stats
        if measured is None:
            return []
        measured_mean, measured_std, count = measured
        if _same(mean, measured_mean) and _same(std, measured_std):
            return []
        source = "ImageNet's constants (the image_folder default)" if data.mean is None else f"mean {_numbers(mean)} std {_numbers(std)}"
        return [Finding("normalization", "warning", "data.mean",
                        f"images are normalised with {source}, but {count} training images of this folder measure mean "
                        f"{_numbers(measured_mean)} std {_numbers(measured_std)}: inputs are off-centre and mis-scaled",
                        f"data.mean: {_numbers(measured_mean)}, data.std: {_numbers(measured_std)} (measured; "
                        "`reprocls data stats` measures every image)")]
    expected_mean, expected_std = context.native_stats
    mean = tuple(data.mean) if data.mean is not None else expected_mean
    std = tuple(data.std) if data.std is not None else expected_std
    if _same(mean, expected_mean) and _same(std, expected_std):
        return []
    key = "data.mean" if not _same(mean, expected_mean) else "data.std"
    imagenet = " (ImageNet's constants)" if _same(mean, convert_stats(IMAGENET_MEAN, channels)) else ""
    return [Finding("normalization", "warning", key,
                    f"images are normalised with mean {_numbers(mean)} std {_numbers(std)}{imagenet}, but {name}'s are "
                    f"mean {_numbers(expected_mean)} std {_numbers(expected_std)}: inputs are off-centre and mis-scaled",
                    f"remove data.mean and data.std so {name}'s own constants apply (or set data.mean: "
                    f"{_numbers(expected_mean)}, data.std: {_numbers(expected_std)})")]


@CHECKS.register
def lr_not_scaled(context: Context) -> list[Finding]:
    """A paper's lr belongs to the paper's batch; at another batch it must be rescaled, from that batch."""
    config = context.config
    reference = config.reference
    if reference is None or reference.batch_size is None:
        return []
    paper, batch, optim = reference.batch_size, config.data.batch_size * context.world_size, config.optim
    if optim.lr_reference_batch == paper or (optim.lr_reference_batch is None and batch == paper):
        return []
    fixed_lr = scaled_lr(dataclasses.replace(optim, lr_reference_batch=paper), batch)
    batch_text = f"effective batch {batch} ({context.world_size} process(es) x data.batch_size {config.data.batch_size})"
    if optim.lr_reference_batch is None:
        message = (f"the paper trained with batch {paper} but this recipe's {batch_text} differs and "
                   f"optim.lr_reference_batch is unset, so optim.lr {optim.lr:g} is used as given instead of rescaled")
    else:
        message = (f"optim.lr_reference_batch is {optim.lr_reference_batch} but the paper's batch (reference.batch_size) "
                   f"is {paper}: optim.lr {optim.lr:g} is rescaled from the wrong batch to "
                   f"{scaled_lr(optim, batch):g} at {batch_text}")
    return [Finding("lr_not_scaled", "warning", "optim.lr_reference_batch", message,
                    f"optim.lr_reference_batch: {paper} (the paper's batch; optim.lr {optim.lr:g} then becomes "
                    f"{fixed_lr:g} at batch {batch}, {optim.lr_scaling} rule)")]


RANDOM_TRANSFORMS: tuple[type, ...] = (
    v2.RandomResizedCrop, v2.RandomCrop, v2.RandomHorizontalFlip, v2.RandomVerticalFlip, v2.RandomRotation,
    v2.RandomAffine, v2.RandomPerspective, v2.ColorJitter, v2.RandomGrayscale, v2.RandomErasing, v2.RandAugment,
    v2.TrivialAugmentWide, v2.AutoAugment, v2.AugMix, v2.RandomApply, v2.RandomChoice, v2.RandomOrder,
    v2.ElasticTransform, v2.GaussianBlur,
)


def _random_steps(transform: Any) -> list[str]:
    """Names of the random v2 transforms inside a (possibly nested) transform."""
    found = [type(transform).__name__] if isinstance(transform, RANDOM_TRANSFORMS) else []
    for inner in getattr(transform, "transforms", []) or []:
        found += _random_steps(inner)
    return found


def _eval_pass(loader: Loader, seed: int) -> torch.Tensor:
    """Every probe image through the evaluation loader, with the global RNG at `seed` and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.cat([images for images, _ in loader])


@CHECKS.register
def random_eval_augmentation(context: Context) -> list[Finding]:
    """Random crops, flips or policies at evaluation make test accuracy noisy and lower than the paper's protocol."""
    loader, splits = context.eval_probe()
    steps = _random_steps(loader.loader.dataset.transform) if isinstance(loader, DeviceLoader) else []
    first, second = _eval_pass(loader, 1), _eval_pass(loader, 2)
    changed = first.shape != second.shape or not torch.equal(first, second)
    if not steps and not changed:
        return []
    name = context.config.data.name
    what = f"random steps {', '.join(dict.fromkeys(steps))}" if steps else "random steps"
    effect = ("; two passes over the same images gave different inputs" if changed
              else " (they did not fire on the probe images, but will on others)")
    owner = (f"the {name} dataset's own eval_transform" if splits.eval_transform is not None
             else f"the data layer's evaluation pipeline for data.preset {context.config.data.preset}")
    return [Finding("random_eval_augmentation", "error", "data.name",
                    f"{owner} has {what}{effect}: test accuracy becomes noisy and is not measured the way papers "
                    "measure it",
                    f"give the dataset of data.name ({name}) a deterministic evaluation transform: Resize + CenterCrop "
                    "instead of random crops, no flips, jitter or policies (augment in the training transform only)")]


@CHECKS.register
def tiny_bn_batch(context: Context) -> list[Finding]:
    """BatchNorm normalises each micro-batch with its own statistics; a few images give noisy means and variances."""
    config = context.config
    if not _has_batchnorm(context.model):
        return []
    micro = config.data.batch_size // config.train.accum_steps
    synced = config.train.sync_batchnorm and context.world_size > 1
    bn_batch = micro * context.world_size if synced else micro
    if bn_batch >= MIN_BN_BATCH:
        return []
    accumulation = f" (data.batch_size {config.data.batch_size} / train.accum_steps {config.train.accum_steps})" \
        if config.train.accum_steps > 1 else ""
    message = (f"{config.model.name} has BatchNorm layers and each one normalises a batch of {bn_batch} image(s) per "
               f"device{accumulation}: with fewer than {MIN_BN_BATCH}, the batch statistics are so noisy that training "
               "is unstable and the running statistics used at test time drift from the data's")
    if context.world_size > 1 and not config.train.sync_batchnorm and micro * context.world_size >= MIN_BN_BATCH:
        return [Finding("tiny_bn_batch", "warning", "train.sync_batchnorm", message,
                        f"train.sync_batchnorm: true (CUDA): statistics over all {context.world_size} processes' "
                        f"{micro * context.world_size} images")]
    fix = f"data.batch_size: {MIN_BN_BATCH * config.train.accum_steps} or more"
    if config.train.accum_steps > 1:
        fix += " or fewer train.accum_steps"
    return [Finding("tiny_bn_batch", "warning", "data.batch_size", message,
                    f"{fix} (rescaling lr with optim.lr_reference_batch), or a model without BatchNorm")]


@CHECKS.register
def slow_bn_statistics(context: Context) -> list[Finding]:
    """A slow BatchNorm momentum (0.01, tuned for long ImageNet runs) leaves running statistics stale in a short one."""
    config = context.config
    momenta = [m.momentum for m in context.model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None]
    if not momenta or min(momenta) >= 0.1:  # torch's default momentum catches up within a few dozen steps
        return []
    momentum = min(momenta)
    steps_per_epoch = context.train_images // (config.data.batch_size * context.world_size)
    updates = config.schedule.epochs * steps_per_epoch * config.train.accum_steps
    if updates * momentum >= SLOW_BN_HORIZONS:
        return []
    needed = math.ceil(SLOW_BN_HORIZONS / momentum)
    epochs = math.ceil(needed / (steps_per_epoch * config.train.accum_steps)) if steps_per_epoch else config.schedule.epochs
    faster = (" or model.kwargs: {norm_momentum: 0.1}" if "norm_momentum" in inspect.signature(type(context.model)).parameters
              else "")
    return [Finding("slow_bn_statistics", "warning", "schedule.epochs",
                    f"{config.model.name}'s BatchNorm momentum is {momentum:g}, so its running statistics need about "
                    f"{needed:.0f} updates to follow the weights, but this recipe makes only {updates}: the statistics "
                    "used at test time lag the trained weights and eval accuracy can collapse while train accuracy looks fine",
                    f"schedule.epochs: {epochs} or more (at least {needed} BatchNorm updates){faster}")]


@CHECKS.register
def missing_seed(context: Context) -> list[Finding]:
    """A seed left at its default is invisible in the recipe, so a reader cannot tell which run it reproduces."""
    if context.explicit is None or "seed" in context.explicit:
        return []
    return [Finding("missing_seed", "warning", "seed",
                    f"the recipe does not set seed, so the default ({context.config.seed}) applies silently and a "
                    "reader of the recipe cannot tell which seed its numbers came from",
                    f"seed: {context.config.seed} (any fixed value, written in the recipe)")]


@CHECKS.register
def short_schedule(context: Context) -> list[Finding]:
    """Fewer epochs than the paper usually means a lower accuracy than the paper's."""
    reference, epochs = context.config.reference, context.config.schedule.epochs
    if reference is None or reference.epochs is None or epochs >= reference.epochs:
        return []
    return [Finding("short_schedule", "warning", "schedule.epochs",
                    f"the recipe trains {epochs} epochs but the paper trained {reference.epochs}: expect a lower top-1 "
                    f"than its {100 * reference.top1:.2f} %",
                    f"schedule.epochs: {reference.epochs} (the paper's length; {reference.epochs / epochs:.1f}x the "
                    "training time), or keep the short schedule and judge the result against a short-schedule baseline")]


@CHECKS.register
def norm_weight_decay(context: Context) -> list[Finding]:
    """Weight decay on norm scales and biases shrinks them toward zero, which most papers avoid."""
    optim, reference = context.config.optim, context.config.reference
    if not optim.decay_norm_and_bias or optim.weight_decay == 0:
        return []
    stated = reference.norm_weight_decay if reference is not None else None
    if stated:
        return []
    if stated is False:
        message = (f"optim.decay_norm_and_bias is true, so weight decay {optim.weight_decay:g} also shrinks norm weights "
                   "and biases, but the paper does not decay them (reference.norm_weight_decay: false)")
    else:
        message = (f"optim.decay_norm_and_bias is true, so weight decay {optim.weight_decay:g} also shrinks norm weights "
                   "and biases; most papers leave them undecayed (if yours does, say so with "
                   "reference.norm_weight_decay: true)")
    return [Finding("norm_weight_decay", "warning", "optim.decay_norm_and_bias", message,
                    "optim.decay_norm_and_bias: false")]


UPSCALE_WARNING = 3  # image_size / the images' own size at and above which the doctor speaks


@CHECKS.register
def upscale(context: Context) -> list[Finding]:
    """Images enlarged many times cost that factor squared in compute per image and add no detail."""
    native, size = context.dataset.image_size, context.image_size
    if not native or size < UPSCALE_WARNING * native:
        return []
    factor = size / native
    source = ("data.image_size" if context.config.data.image_size else
              f"the weights' input size ({context.weights.source})" if context.weights is not None else "the default")
    pretrained = context.weights is not None
    needs_it = warn_if_input_too_small_quietly(context.model, native)  # an ImageNet stem: upscaling is its remedy
    message = (f"the images are {native} px but the model sees them at {size} px ({source}): {factor:.1f}x larger, "
               f"{factor ** 2:.0f}x the compute per image, with no detail the images do not have")
    fix = (f"data.image_size: {native} (or a small multiple; a small-image model such as resnet20 suits {native} px)"
           + ("; pretrained weights may still prefer their own size, so compare both on validation" if pretrained else ""))
    return [Finding("upscale", "info" if pretrained or needs_it else "warning", "data.image_size", message, fix)]


def warn_if_input_too_small_quietly(model: nn.Module, size: int) -> bool:
    """Whether the model's stem is made for large images, so small ones must be enlarged for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return warn_if_input_too_small(model, size) is not None


PREPROCESSING_KEYS = ("mean", "std", "image_size", "interpolation", "crop_fraction")


@CHECKS.register
def preprocessing_mismatch(context: Context) -> list[Finding]:
    """Pretrained weights were trained on inputs prepared one way; feeding them another way costs accuracy."""
    weights, data = context.weights, context.config.data
    if weights is None:
        return []
    differing = []
    for key in PREPROCESSING_KEYS:
        theirs, ours = getattr(weights, key), getattr(data, key)
        if theirs is None or ours is None:
            continue
        if key in ("mean", "std"):
            theirs = convert_stats(tuple(theirs), len(ours))
            same = len(theirs) == len(ours) and all(abs(a - b) <= STATS_TOLERANCE for a, b in zip(theirs, ours))
        else:
            same = theirs == ours if not isinstance(theirs, float) else abs(theirs - ours) < 1e-6
        if not same:
            differing.append(f"data.{key} {_show(ours)} (the weights: {_show(theirs)})")
    if not differing:
        return []
    keys = ", ".join(item.split(" ", 1)[0] for item in differing)
    return [Finding("preprocessing_mismatch", "warning", differing[0].split(" ", 1)[0],
                    f"the recipe prepares inputs unlike the weights were trained on ({weights.source}): "
                    + "; ".join(differing),
                    f"remove {keys} from the recipe so the weights' own values apply (unless you changed them on "
                    "purpose and checked it on validation)")]


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return _numbers(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)

