"""Augmentation policies and MixUp/CutMix from torchvision.transforms.v2, plus the batch-wide crop/flip/erase kernels."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from reprocls.config import AugmentConfig
from reprocls.registry import Registry

PolicyBuilder = Callable[[AugmentConfig], v2.Transform]
POLICIES: Registry[PolicyBuilder] = Registry("augment policy")


@POLICIES.register
def randaugment(cfg: AugmentConfig) -> v2.Transform:
    """N random operations at one shared magnitude M (Cubuk et al. 2020)."""
    return v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude)


@POLICIES.register
def trivialaugment(cfg: AugmentConfig) -> v2.Transform:
    """One random operation at a random magnitude, no parameters to tune (Müller & Hutter 2021)."""
    return v2.TrivialAugmentWide()


@POLICIES.register
def autoaugment(cfg: AugmentConfig) -> v2.Transform:
    """A policy learned by search on ImageNet, CIFAR-10 or SVHN (Cubuk et al. 2019)."""
    return v2.AutoAugment(v2.AutoAugmentPolicy(cfg.autoaugment_policy))


@POLICIES.register
def augmix(cfg: AugmentConfig) -> v2.Transform:
    """Mixtures of augmentation chains (Hendrycks et al. 2020), without its consistency loss."""
    return v2.AugMix()


def build_policy(cfg: AugmentConfig) -> v2.Transform | None:
    """The configured per-image policy, or None for `policy: none`."""
    return None if cfg.policy == "none" else POLICIES.get(cfg.policy)(cfg)


def apply_per_image(policy: v2.Transform, images: torch.Tensor) -> torch.Tensor:
    """Run a per-image policy over a uint8 batch: each image draws its own operations, as in a DataLoader."""
    return torch.stack([policy(image) for image in images])


class BatchMix:
    """MixUp or CutMix on a batch, returning soft targets; with both enabled, one is picked per batch."""

    def __init__(self, num_classes: int, mixup_alpha: float, cutmix_alpha: float, prob: float = 1.0) -> None:
        choices: list[v2.Transform] = []
        if mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not choices:
            raise ValueError("BatchMix needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.transform = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
        self.num_classes, self.prob = num_classes, prob

    @classmethod
    def from_config(cls, cfg: AugmentConfig, num_classes: int) -> BatchMix | None:
        if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
            return None
        return cls(num_classes, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prob < 1 and float(torch.rand(())) >= self.prob:
            return images, F.one_hot(labels, self.num_classes).to(images.dtype)
        return self.transform(images, labels)


def crop_flip_params(n: int, padding: int, hflip: bool, generator: torch.Generator,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image crop offsets (dy, dx) into the padded image and flip flags."""
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool, device=device)
    return dy, dx, flip


def crop_flip(images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Zero-pad, crop each image at its own offset and flip the flagged ones, for a whole batch at once."""
    n, c, h, w = images.shape
    device = images.device
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        images = padded[torch.arange(n, device=device)[:, None, None, None], torch.arange(c, device=device)[None, :, None, None],
                        rows, cols]
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def random_crop_flip(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-image random pad-and-crop and horizontal flip of a batch (no Python loop over images)."""
    return crop_flip(images, padding, *crop_flip_params(len(images), padding, hflip, generator, images.device))


ErasePlan = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def erase_params(n: int, h: int, w: int, probability: float, generator: torch.Generator, device: torch.device,
                 scale: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3)) -> ErasePlan:
    """Per-image rectangle (top, left, height, width) and whether to erase it, with RandomErasing's defaults."""
    area = torch.empty(n, device=device).uniform_(*scale, generator=generator) * h * w
    aspect = torch.empty(n, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator).exp()
    height = (area * aspect).sqrt().round().clamp(1, h).long()
    width = (area / aspect).sqrt().round().clamp(1, w).long()
    top = (torch.rand(n, generator=generator, device=device) * (h - height + 1)).long()
    left = (torch.rand(n, generator=generator, device=device) * (w - width + 1)).long()
    chosen = torch.rand(n, generator=generator, device=device) < probability
    return top, left, height, width, chosen


def erase(images: torch.Tensor, plan: ErasePlan) -> torch.Tensor:
    """Zero each chosen image's rectangle (on normalised images: the dataset mean)."""
    top, left, height, width, chosen = plan
    _, _, h, w = images.shape
    rows, cols = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
    inside = (((rows[None] >= top[:, None]) & (rows[None] < (top + height)[:, None]))[:, :, None]
              & ((cols[None] >= left[:, None]) & (cols[None] < (left + width)[:, None]))[:, None, :])
    return images.masked_fill((inside & chosen[:, None, None])[:, None], 0.0)


def random_erase(images: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Zero a random rectangle in a random share of the batch, each image its own rectangle (Zhong et al. 2020)."""
    n, _, h, w = images.shape
    return erase(images, erase_params(n, h, w, probability, generator, images.device))
