"""Per-image preprocessing presets built from torchvision.transforms.v2, for file-backed datasets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torchvision.transforms import InterpolationMode, v2

from reprocls.config import AugmentConfig
from reprocls.data.augment import build_policy

Preset = Literal["small", "imagenet", "none"]
EVAL_CROP_RATIO = 0.875  # resize to size/0.875 then centre-crop: the classic ImageNet evaluation (224 from 256)
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}


@dataclass(frozen=True)
class Preprocessing:
    """What pretrained weights expect of their inputs (any field None: they do not say), and where that was read."""

    source: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    image_size: int | None = None
    interpolation: str | None = None
    crop_fraction: float | None = None


def resolve_preset(preset: str, image_size: int) -> Preset:
    """'auto' means pad-and-crop for small images and the ImageNet recipe for large ones."""
    if preset == "auto":
        return "small" if image_size <= 64 else "imagenet"
    return preset  # type: ignore[return-value]


def _to_normalized_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transform(preset: Preset, *, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                    augment: AugmentConfig, interpolation: str = "bilinear") -> v2.Compose:
    """Random augmentation for training: 'imagenet' (RandomResizedCrop, flip, ColorJitter) or 'small' (pad-crop, flip),
    then the configured policy (RandAugment, TrivialAugment...) and random erasing."""
    steps: list[v2.Transform] = [v2.ToImage()]
    mode = INTERPOLATIONS[interpolation]
    if preset == "imagenet":
        steps.append(v2.RandomResizedCrop(image_size, scale=tuple(augment.rrc_scale), interpolation=mode, antialias=True))
    else:
        steps.append(v2.Resize((image_size, image_size), interpolation=mode, antialias=True))
        if preset == "small" and augment.crop_padding > 0:
            steps.append(v2.RandomCrop(image_size, padding=augment.crop_padding))
    if preset != "none" and augment.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if preset == "imagenet" and augment.color_jitter > 0:
        strength = augment.color_jitter
        steps.append(v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength))
    policy = build_policy(augment) if preset != "none" else None
    if policy is not None:
        steps.append(policy)
    erasing = [v2.RandomErasing(p=augment.random_erasing, value=0)] if preset != "none" and augment.random_erasing > 0 else []
    return v2.Compose(steps + _to_normalized_tensor(mean, std)[1:] + erasing)


def eval_transform(preset: Preset, *, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                   interpolation: str = "bilinear", crop_fraction: float = EVAL_CROP_RATIO) -> v2.Compose:
    """Deterministic preprocessing for evaluation: resize to image_size / crop_fraction + centre crop (imagenet) or a
    plain resize."""
    mode = INTERPOLATIONS[interpolation]
    if preset == "imagenet":
        resize = [v2.Resize(int(round(image_size / crop_fraction)), interpolation=mode, antialias=True),
                  v2.CenterCrop(image_size)]
    else:
        resize = [v2.Resize((image_size, image_size), interpolation=mode, antialias=True)]
    return v2.Compose([v2.ToImage(), *resize, *_to_normalized_tensor(mean, std)[1:]])
