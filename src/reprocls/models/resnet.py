"""ResNet (He et al. 2016): the CIFAR-style 6n+2 networks of section 4.2 and the ImageNet-style 18-152.

Module names follow torchvision's ResNet, so its state dicts load into ours unchanged; so do timm's
`resnet18` ... `resnet152` (the same names and the same v1.5 bottleneck, stride on the 3x3).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from reprocls.models import register_model
from reprocls.models._base import PooledFcClassifier, linear_head, run_blocks

Stem = Literal["imagenet", "cifar"]
Shortcut = Literal["A", "B"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, kernel_size: int = 3) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A of the paper: subsample and zero-pad channels, so the shortcut has no parameters."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


def shortcut(in_planes: int, out_planes: int, stride: int, kind: Shortcut) -> nn.Module | None:
    """Identity when shapes match, else option A (zero-pad) or option B (1x1 conv + BN)."""
    if stride == 1 and in_planes == out_planes:
        return None
    if kind == "A":
        return PadShortcut(in_planes, out_planes, stride)
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (k x k in a searched network) with a residual connection."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut_kind: Shortcut = "B",
                 kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride, kernel_size)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, kernel_size=kernel_size)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = shortcut(in_planes, planes, stride, shortcut_kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as in torchvision's 'ResNet v1.5'), 1x1 expand."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut_kind: Shortcut = "B",
                 kernel_size: int = 3) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, kernel_size)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(in_planes, out_planes, stride, shortcut_kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(PooledFcClassifier):
    """A stem, one stage per entry of `depths` (stride 2 after the first), global pooling and a linear head.
    `stem_stride` (CIFAR stem only) and `kernel_size` (every block's k x k convolutions) are search-space knobs."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: tuple[int, ...],
        widths: tuple[int, ...],
        *,
        stem: Stem = "imagenet",
        stem_stride: int = 1,
        kernel_size: int = 3,
        shortcut_kind: Shortcut = "B",
        num_classes: int = 1000,
        in_chans: int = 3,
        zero_init_residual: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size not in (1, 3, 5, 7):
            raise ValueError(f"kernel_size {kernel_size}: use an odd size of 1, 3, 5 or 7")
        self.stem_type = stem
        stem_width = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
            self.stem_stride, self.default_input_size = 4, (in_chans, 224, 224)
        else:
            if stem_stride not in (1, 2):
                raise ValueError(f"stem_stride {stem_stride}: the CIFAR stem takes 1 (full resolution) or 2")
            self.conv1 = conv3x3(in_chans, stem_width, stem_stride)
            self.maxpool = nn.Identity()
            self.stem_stride, self.default_input_size, self.designed_input_size = stem_stride, (in_chans, 32, 32), 32
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)

        in_planes = stem_width
        self.stage_names: list[str] = []
        for index, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for block_index in range(depth):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(block(in_planes, width, stride, shortcut_kind, kernel_size))
                in_planes = width * block.expansion
            name = f"layer{index + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
        self.num_features = in_planes
        self.fc = linear_head(in_planes, num_classes)
        self.grad_checkpointing = grad_checkpointing
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """He-normal convolutions, unit BatchNorm; optionally start each residual branch at zero (Goyal et al.)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if last_bn is not None:
                    nn.init.zeros_(last_bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = run_blocks(getattr(self, name), x, self.grad_checkpointing)
        return x



def _cifar_resnet(depth: int, num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> ResNet:
    """The 6n+2 family: three stages of n BasicBlocks with 16, 32 and 64 channels."""
    n = (depth - 2) // 6
    kwargs.setdefault("shortcut_kind", "A")
    kwargs.setdefault("stem", "cifar")
    return ResNet(BasicBlock, (n, n, n), (16, 32, 64), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def cifar_resnet(*, depths: tuple[int, ...] = (3, 3, 3), widths: tuple[int, ...] = (16, 32, 64), kernel_size: int = 3,
                 stem_stride: int = 1, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """A CIFAR-style ResNet with every stage's depth and width free (the defaults are ResNet-20): the network
    behind the resnet_cifar search space (models/spaces.py), so a found architecture is an ordinary recipe."""
    if len(depths) != len(widths) or not depths or min(depths) < 1 or min(widths) < 1:
        raise ValueError(f"depths {tuple(depths)} and widths {tuple(widths)}: one positive entry per stage in both")
    kwargs.setdefault("shortcut_kind", "A")
    return ResNet(BasicBlock, tuple(depths), tuple(widths), stem="cifar", stem_stride=stem_stride,
                  kernel_size=kernel_size, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def resnet20(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-20 for 32x32 inputs, 0.27 M parameters (He et al. 2016, table 6)."""
    return _cifar_resnet(20, num_classes, in_chans, kwargs)


@register_model
def resnet32(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-32 for 32x32 inputs, 0.46 M parameters (He et al. 2016, table 6)."""
    return _cifar_resnet(32, num_classes, in_chans, kwargs)


@register_model
def resnet44(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-44 for 32x32 inputs, 0.66 M parameters (He et al. 2016, table 6)."""
    return _cifar_resnet(44, num_classes, in_chans, kwargs)


@register_model
def resnet56(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-56 for 32x32 inputs, 0.85 M parameters (He et al. 2016, table 6)."""
    return _cifar_resnet(56, num_classes, in_chans, kwargs)


@register_model
def resnet110(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-110 for 32x32 inputs, 1.7 M parameters (He et al. 2016, table 6)."""
    return _cifar_resnet(110, num_classes, in_chans, kwargs)


_IMAGENET_WIDTHS = (64, 128, 256, 512)


@register_model
def resnet18(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-18, 11.7 M parameters, 1.8 G multiply-adds at 224 px (He et al. 2016, table 1)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), _IMAGENET_WIDTHS, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def resnet34(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-34, 21.8 M parameters, 3.7 G multiply-adds at 224 px (He et al. 2016, table 1)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), _IMAGENET_WIDTHS, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def resnet50(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-50, 25.6 M parameters, 4.1 G multiply-adds at 224 px (He et al. 2016, table 1)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), _IMAGENET_WIDTHS, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def resnet101(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-101, 44.5 M parameters, 7.8 G multiply-adds at 224 px (He et al. 2016, table 1)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), _IMAGENET_WIDTHS, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def resnet152(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-152, 60.2 M parameters, 11.5 G multiply-adds at 224 px (He et al. 2016, table 1)."""
    return ResNet(Bottleneck, (3, 8, 36, 3), _IMAGENET_WIDTHS, num_classes=num_classes, in_chans=in_chans, **kwargs)
