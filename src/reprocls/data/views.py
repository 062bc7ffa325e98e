"""The two augmented views of self-supervised pretraining, one preset per method with the values of its paper, built
from torchvision.transforms.v2; any value can be overridden, and `describe` states what a pipeline does."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from reprocls.data.datasets import FileSplit, Split
from reprocls.data.loaders import DecodedDataset, FileDataset, ShardDataset, batch_rng
from reprocls.data.samplers import EpochSampler
from reprocls.data.shards import ShardSplit
from reprocls.registry import Registry


@dataclass(frozen=True)
class ViewSettings:
    """One view's augmentation. jitter: brightness, contrast, saturation, hue of ColorJitter, applied with
    probability jitter_prob; blur_prob with sigma in (0.1, 2.0) and a kernel of a tenth of the image."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip_prob: float = 0.5
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    jitter_prob: float = 0.8
    grey_prob: float = 0.2
    blur_prob: float = 0.0
    solarize_prob: float = 0.0
    source: str = ""


VIEWS: Registry = Registry("view preset")


@VIEWS.register
def simclr(image_size: int) -> tuple[ViewSettings, ViewSettings]:
    """SimCLR (Chen et al. 2020, appendix A): colour distortion strength 1 (0.5 and no blur for 32 px CIFAR, their
    B.9); blur on half the views for larger images."""
    small = image_size <= 64
    view = ViewSettings(jitter=(0.4, 0.4, 0.4, 0.1) if small else (0.8, 0.8, 0.8, 0.2),
                        blur_prob=0.0 if small else 0.5,
                        source="SimCLR, Chen et al. 2020, appendix A (CIFAR: B.9, strength 0.5, no blur)")
    return view, view


@VIEWS.register
def moco_v2(image_size: int) -> tuple[ViewSettings, ViewSettings]:
    """MoCo v2 (Chen, Fan, Girshick, He 2020): crop from 20 %, jitter 0.4/0.4/0.4/0.1, blur on half (large images)."""
    view = ViewSettings(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_prob=0.0 if image_size <= 64 else 0.5,
                        source="MoCo v2, Chen et al. 2020 (Improved Baselines), section 3")
    return view, view


@VIEWS.register
def byol(image_size: int) -> tuple[ViewSettings, ViewSettings]:
    """BYOL (Grill et al. 2020, table 6): asymmetric views, blur always on the first and 10 % on the second,
    solarisation 20 % on the second only (blur left out for images of 64 px or less)."""
    small = image_size <= 64
    first = ViewSettings(jitter=(0.4, 0.4, 0.2, 0.1), blur_prob=0.0 if small else 1.0,
                         source="BYOL, Grill et al. 2020, table 6")
    return first, replace(first, blur_prob=0.0 if small else 0.1, solarize_prob=0.2)


def view_settings(method: str, image_size: int, overrides: dict[str, Any] | None = None
                  ) -> tuple[ViewSettings, ViewSettings]:
    """The method's two views with `overrides` (ViewSettings field -> value) applied to both."""
    known = {f.name for f in fields(ViewSettings)} - {"source"}
    unknown = set(overrides or {}) - known
    if unknown:
        raise ValueError(f"unknown view setting(s) {sorted(unknown)}; known: {sorted(known)}")
    first, second = VIEWS.get(method)(image_size)
    if overrides:
        first, second = replace(first, **overrides), replace(second, **overrides)
    return first, second


def build_view(settings: ViewSettings, image_size: int, mean: tuple[float, ...], std: tuple[float, ...]
               ) -> v2.Compose:
    """uint8 image (C, H, W) or PIL -> a normalised float view."""
    steps: list[v2.Transform] = [v2.ToImage(),
                                 v2.RandomResizedCrop(image_size, scale=settings.crop_scale, antialias=True),
                                 v2.RandomHorizontalFlip(settings.hflip_prob)]
    if settings.jitter_prob > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(*settings.jitter)], p=settings.jitter_prob))
    if settings.grey_prob > 0 and len(mean) == 3:
        steps.append(v2.RandomGrayscale(settings.grey_prob))
    if settings.blur_prob > 0:
        kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=settings.blur_prob))
    if settings.solarize_prob > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=settings.solarize_prob))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)


def describe(settings: ViewSettings) -> str:
    """One line for logs and docs: what this view does."""
    b, c, s, h = settings.jitter
    return (f"crop {settings.crop_scale[0]:g}-{settings.crop_scale[1]:g}, flip {settings.hflip_prob:g}, jitter "
            f"{b:g}/{c:g}/{s:g}/{h:g} p {settings.jitter_prob:g}, grey {settings.grey_prob:g}, blur "
            f"{settings.blur_prob:g}, solarize {settings.solarize_prob:g} ({settings.source})")


class TwoViews(torch.utils.data.Dataset):
    """Any split served as (first view, second view, label): the pretraining dataset. A key of (index, seed, epoch,
    position), as EpochSampler yields, seeds both views by the image's place in the epoch, so the views are the same
    whatever the worker or process count and after a resume."""

    def __init__(self, split: Split, first: v2.Compose, second: v2.Compose, *, channels: int = 1) -> None:
        self.split, self.first, self.second = split, first, second
        mode = "L" if channels == 1 else "RGB"
        self.decoded: DecodedDataset | None = None
        if isinstance(split, FileSplit):
            self.decoded = FileDataset(split, None, mode)
        elif isinstance(split, ShardSplit):
            self.decoded = ShardDataset(split, None, mode)

    def __len__(self) -> int:
        return len(self.split)

    def open(self, index: int) -> tuple[Any, int]:
        """uint8 (C, H, W) of an in-memory split, else the decoded PIL image in the run's channels."""
        if self.decoded is not None:
            return self.decoded.open(index)
        return self.split.images[index], int(self.split.labels[index])

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, position = (key[0], key[1:]) if isinstance(key, tuple) else (key, None)
        image, label = self.open(index)
        with batch_rng(*position) if position else contextlib.nullcontext():
            return self.first(image), self.second(image), label


def two_view_loader(dataset: TwoViews, *, batch_size: int, seed: int, workers: int, rank: int = 0,
                    world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """This rank's share of every global batch of batch_size x world_size images, in the order of EpochSampler (the
    order of `train`), so one process and several see the same global batches."""
    sampler = EpochSampler(len(dataset), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0)
