"""Wide Residual Networks (Zagoruyko & Komodakis 2016): CIFAR-style pre-activation ResNets, k times wider.

WRN-d-k has three stages of n blocks, each block two 3x3 convolutions, with d = 6n + 4 in the authors' count;
the stages have 16k, 32k and 64k channels.
torchvision's wide_resnet50_2 is a different model (an ImageNet bottleneck ResNet) and is not defined here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reprocls.models import register_model
from reprocls.models._base import PooledFcClassifier, linear_head, run_blocks


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class WideBasicBlock(nn.Module):
    """Pre-activation block B(3,3): BN-ReLU-conv3x3, [dropout], BN-ReLU-conv3x3, added to the shortcut.

    When the shape changes, the shortcut is a 1x1 convolution of the pre-activated input, as in the authors' code.
    Dropout sits between the two convolutions (the paper's section 2.4).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + identity


class WideResNet(PooledFcClassifier):
    """A 3x3 stem with 16 channels, three stages of wide pre-activation blocks (stride 2 after the first),
    a final BN-ReLU, global pooling and a linear head."""

    stem_stride = 1

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        *,
        dropout: float = 0.0,
        num_classes: int = 10,
        in_chans: int = 3,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.default_input_size, self.designed_input_size = (in_chans, 32, 32), 32
        self.conv1 = conv3x3(in_chans, 16)

        in_planes = 16
        self.stage_names: list[str] = []
        for index, width in enumerate(widths):
            blocks = []
            for block_index in range(n):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(WideBasicBlock(in_planes, width, stride, dropout))
                in_planes = width
            name = f"layer{index + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
        self.bn = nn.BatchNorm2d(in_planes)  # the last blocks end in a convolution: normalise before pooling
        self.relu = nn.ReLU(inplace=True)
        self.num_features = in_planes
        self.fc = linear_head(in_planes, num_classes)
        self.grad_checkpointing = grad_checkpointing
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convolutions, unit BatchNorm, zero linear bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for name in self.stage_names:
            stage = getattr(self, name)
            x = run_blocks(stage, x, self.grad_checkpointing)
        return self.relu(self.bn(x))



@register_model
def wrn_28_10(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> WideResNet:
    """WRN-28-10 for 32x32 inputs, 36.5 M parameters (Zagoruyko & Komodakis 2016, table 4)."""
    return WideResNet(28, 10, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def wrn_40_4(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> WideResNet:
    """WRN-40-4 for 32x32 inputs, 8.9 M parameters (Zagoruyko & Komodakis 2016, table 4)."""
    return WideResNet(40, 4, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def wrn_16_8(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> WideResNet:
    """WRN-16-8 for 32x32 inputs, 11.0 M parameters (Zagoruyko & Komodakis 2016, table 4)."""
    return WideResNet(16, 8, num_classes=num_classes, in_chans=in_chans, **kwargs)
