"""SpeedNet: the network of the small-image speed runs (Page 2018, "How to train your ResNet"; Jordan 2024,
airbench): a frozen patch-whitening convolution, three groups of two 3x3 convolutions with max pooling after the
first, global max pooling and a scaled linear head. Few, wide layers keep a CPU or GPU busy where ResNet-20's
16-channel layers leave it waiting on memory; BatchNorm's momentum, eps and learnable scale are arguments, because
speed-run recipes change all three.

The stem only whitens when `model.init: whitening` sets it from the training images (models/_init.py); built
without data it is a fixed random projection.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from reprocls.models import register_model
from reprocls.models._base import Classifier, run_blocks


def norm(channels: int, momentum: float, eps: float, learn_scale: bool) -> nn.BatchNorm2d:
    """BatchNorm with the recipe's momentum and eps; without a learnable scale its weight stays at one."""
    layer = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    layer.weight.requires_grad_(learn_scale)
    return layer


class ConvGroup(nn.Module):
    """conv, 2x2 max pool, BN, GELU, conv, BN, GELU: pooling before the first norm halves its cost."""

    def __init__(self, in_planes: int, planes: int, bn: dict[str, Any]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = norm(planes, **bn)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm(planes, **bn)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        return self.act(self.bn2(self.conv2(x)))


class SpeedNet(Classifier):
    """Whitening stem, ConvGroups of `widths`, global max pool, linear head times `logit_scale`."""

    designed_input_size = 32
    default_input_size = (3, 32, 32)

    def __init__(self, widths: Sequence[int] = (64, 128, 256), *, num_classes: int = 10, in_chans: int = 3,
                 whiten_kernel: int = 2, bn_momentum: float = 0.1, bn_eps: float = 1e-5, bn_learn_scale: bool = True,
                 logit_scale: float = 1.0, grad_checkpointing: bool = False) -> None:
        super().__init__()
        if len(widths) < 1 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be one or more positive channel counts, got {list(widths)}")
        if not 1 <= whiten_kernel <= 7:
            raise ValueError(f"whiten_kernel must be in [1, 7], got {whiten_kernel}")
        # each whitened direction twice, with both signs, so the GELU after it loses nothing (airbench's choice)
        self.stem = nn.Conv2d(in_chans, 2 * in_chans * whiten_kernel ** 2, whiten_kernel, bias=True)
        self.stem.weight.requires_grad_(False)
        self.stem_act = nn.GELU()
        bn = {"momentum": bn_momentum, "eps": bn_eps, "learn_scale": bn_learn_scale}
        planes = [self.stem.out_channels, *map(int, widths)]
        self.features = nn.Sequential(*(ConvGroup(a, b, bn) for a, b in zip(planes, planes[1:])))
        self.num_features = planes[-1]
        self.logit_scale = logit_scale
        self.fc = self._head(num_classes)
        self.grad_checkpointing = grad_checkpointing

    def _head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes, bias=False) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.features, self.stem_act(self.stem(x)), self.grad_checkpointing)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.amax(x, dim=(2, 3))
        return x if pre_logits or isinstance(self.fc, nn.Identity) else self.fc(x) * self.logit_scale

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = self._head(num_classes)


def _speednet(widths: Sequence[int], num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> SpeedNet:
    widths = kwargs.pop("widths", widths)
    return SpeedNet(widths, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def speednet_s(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> SpeedNet:
    """SpeedNet with widths 32-64-128, 0.30 M parameters: the CPU speed-run size (after Jordan 2024, airbench)."""
    return _speednet((32, 64, 128), num_classes, in_chans, kwargs)


@register_model
def speednet_m(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> SpeedNet:
    """SpeedNet with widths 64-128-256, 1.16 M parameters (after Jordan 2024, airbench)."""
    return _speednet((64, 128, 256), num_classes, in_chans, kwargs)


@register_model
def speednet_l(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> SpeedNet:
    """SpeedNet with airbench94's widths 64-256-256, 1.97 M parameters (Jordan 2024)."""
    return _speednet((64, 256, 256), num_classes, in_chans, kwargs)
