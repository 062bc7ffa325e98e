"""Building blocks shared by the mobile families: MobileNetV2, MobileNetV3 and EfficientNet.

Submodule names (`block`, `fc1`, `fc2`, numbered conv/norm/act) follow torchvision's, so its state
dicts load into our models unchanged (MobileNetV2 needs one small key remap, see mobilenetv2.py).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]  # channels -> normalization module, e.g. partial(nn.BatchNorm2d, eps=1e-3)
ActLayer = Callable[..., nn.Module]  # an activation class taking `inplace`: nn.ReLU6, nn.Hardswish, nn.SiLU


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never losing more than 10% (TF-slim's rule)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvNormAct(nn.Sequential):
    """Convolution without bias, normalization, then an activation (none for a linear projection).

    Children are numbered 0 (conv), 1 (norm), 2 (activation), as in torchvision's Conv2dNormActivation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        groups: int = 1,
        norm: NormLayer = nn.BatchNorm2d,
        act: ActLayer | None = nn.ReLU,
    ) -> None:
        padding = (kernel_size - 1) // 2  # 'same' for odd kernels at stride 1
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            norm(out_channels),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): rescale each channel by a gate computed from all channels' means."""

    def __init__(
        self, channels: int, squeeze_channels: int, *, act: ActLayer = nn.ReLU, gate: ActLayer = nn.Sigmoid
    ) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)  # 1x1 convolutions act as linear layers on the means
        self.act = act(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = gate()  # sigmoid (SENet, EfficientNet) or hard-sigmoid (MobileNetV3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)  # squeeze: one mean per channel
        scale = self.gate(self.fc2(self.act(self.fc1(scale))))
        return x * scale


class StochasticDepth(nn.Module):
    """Drop a residual branch for whole samples with probability `p` while training (Huang et al. 2016).

    Kept samples are scaled by 1 / (1 - p), so evaluation needs no correction and is the identity.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"stochastic depth probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # one draw per sample
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (kxk, carries the stride), optional squeeze-excite, linear 1x1 projection.

    MobileNetV2's block (Sandler et al. 2018); MobileNetV3 adds squeeze-excite and h-swish, and EfficientNet's
    MBConv is this block with SiLU, squeeze-excite and stochastic depth. The residual is used when shapes match.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        expanded_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: ActLayer = nn.ReLU6,
        se: nn.Module | None = None,
        norm: NormLayer = nn.BatchNorm2d,
        stochastic_depth_prob: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded_channels != in_channels:  # an expansion ratio of 1 skips the first 1x1
            layers.append(ConvNormAct(in_channels, expanded_channels, 1, norm=norm, act=act))
        depthwise = ConvNormAct(expanded_channels, expanded_channels, kernel_size, stride, groups=expanded_channels,
                                norm=norm, act=act)  # one kxk filter per channel
        layers.append(depthwise)
        if se is not None:
            layers.append(se)
        layers.append(ConvNormAct(expanded_channels, out_channels, 1, norm=norm, act=None))  # linear bottleneck
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob if self.use_residual else 0.0)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + self.stochastic_depth(out) if self.use_residual else out


def init_conv_and_norm(model: nn.Module) -> None:
    """He-normal (fan-out) convolutions with zero bias, unit-scale zero-shift norms: the MobileNet/EfficientNet init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
