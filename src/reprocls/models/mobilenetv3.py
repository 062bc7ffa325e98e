"""MobileNetV3 (Howard et al. 2019): searched inverted residuals with squeeze-excite and h-swish, Large and Small.

Module names follow torchvision's MobileNetV3 (`features`, `classifier`), so its state dicts load unchanged.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reprocls.models import register_model
from reprocls.models._base import Classifier, linear_head, run_blocks
from reprocls.models._layers import (
    ConvNormAct,
    InvertedResidual,
    SqueezeExcite,
    init_conv_and_norm,
    make_divisible,
)

RE, HS = nn.ReLU, nn.Hardswish  # the paper's names for its two nonlinearities

# One row per block: kernel, expanded channels, output channels, squeeze-excite, nonlinearity, stride.
LARGE = (  # Howard et al. 2019, table 1
    (3, 16, 16, False, RE, 1),
    (3, 64, 24, False, RE, 2),
    (3, 72, 24, False, RE, 1),
    (5, 72, 40, True, RE, 2),
    (5, 120, 40, True, RE, 1),
    (5, 120, 40, True, RE, 1),
    (3, 240, 80, False, HS, 2),
    (3, 200, 80, False, HS, 1),
    (3, 184, 80, False, HS, 1),
    (3, 184, 80, False, HS, 1),
    (3, 480, 112, True, HS, 1),
    (3, 672, 112, True, HS, 1),
    (5, 672, 160, True, HS, 2),
    (5, 960, 160, True, HS, 1),
    (5, 960, 160, True, HS, 1),
)
SMALL = (  # Howard et al. 2019, table 2
    (3, 16, 16, True, RE, 2),
    (3, 72, 24, False, RE, 2),
    (3, 88, 24, False, RE, 1),
    (5, 96, 40, True, HS, 2),
    (5, 240, 40, True, HS, 1),
    (5, 240, 40, True, HS, 1),
    (5, 120, 48, True, HS, 1),
    (5, 144, 48, True, HS, 1),
    (5, 288, 96, True, HS, 2),
    (5, 576, 96, True, HS, 1),
    (5, 576, 96, True, HS, 1),
)
STEM_WIDTH = 16
# BatchNorm of the TensorFlow reference (eps 1e-3, decay 0.99), as torchvision uses for these models.
BatchNorm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)

BlockRow = tuple[int, int, int, bool, type[nn.Module], int]


class MobileNetV3(Classifier):
    """A stride-2 h-swish stem, the table's blocks, a 1x1 conv to 6x the last width, pooling and a two-layer head.

    `features` holds [stem, block, ..., block, head conv]; `classifier` is [linear, h-swish, dropout, linear].
    """

    def __init__(
        self,
        blocks: tuple[BlockRow, ...],
        hidden_width: int,
        *,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.2,
        stochastic_depth_prob: float = 0.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.stem_stride, self.default_input_size = 2, (in_chans, 224, 224)
        width = make_divisible(STEM_WIDTH * width_mult)
        layers: list[nn.Module] = [ConvNormAct(in_chans, width, 3, stride=2, norm=BatchNorm, act=HS)]
        for block_id, (kernel, expanded, out, use_se, act, stride) in enumerate(blocks):
            expanded, out = make_divisible(expanded * width_mult), make_divisible(out * width_mult)
            se = None
            if use_se:  # squeeze to a quarter of the expanded width, gate with a hard sigmoid (section 5.3)
                se = SqueezeExcite(expanded, make_divisible(expanded // 4), act=nn.ReLU, gate=nn.Hardsigmoid)
            layers.append(
                InvertedResidual(
                    width, out, expanded_channels=expanded, kernel_size=kernel, stride=stride, act=act, se=se,
                    norm=BatchNorm, stochastic_depth_prob=stochastic_depth_prob * block_id / len(blocks),
                )
            )
            width = out
        head_width = 6 * width
        layers.append(ConvNormAct(width, head_width, 1, norm=BatchNorm, act=HS))
        self.features = nn.Sequential(*layers)
        self.num_features = make_divisible(hidden_width * width_mult)  # the pre-logits embedding
        self.classifier = nn.Sequential(
            nn.Linear(head_width, self.num_features),
            nn.Hardswish(inplace=True),
            nn.Dropout(dropout, inplace=True),
            linear_head(self.num_features, num_classes),
        )
        self.grad_checkpointing = grad_checkpointing
        init_conv_and_norm(self)
        for layer in self.classifier:
            self._init_linear(layer)

    @staticmethod
    def _init_linear(layer: nn.Module) -> None:
        """Normal(0, 0.01) weights and zero bias for the dense layers."""
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.zeros_(layer.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features[0](x)
        x = run_blocks(self.features[1:-1], x, self.grad_checkpointing)
        return self.features[-1](x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        hidden, act, dropout, fc = self.classifier
        x = act(hidden(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))
        return x if pre_logits else fc(dropout(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier[3]

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier[3] = linear_head(self.num_features, num_classes)
        self._init_linear(self.classifier[3])


@register_model
def mobilenet_v3_large(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Large, 5.5 M parameters (Howard et al. 2019, "Searching for MobileNetV3")."""
    return MobileNetV3(LARGE, 1280, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def mobilenet_v3_small(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Small, 2.5 M parameters (Howard et al. 2019, "Searching for MobileNetV3")."""
    return MobileNetV3(SMALL, 1024, num_classes=num_classes, in_chans=in_chans, **kwargs)
