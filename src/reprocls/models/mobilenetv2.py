"""MobileNetV2 (Sandler et al. 2018): inverted residuals with linear bottlenecks.

Module names follow torchvision's MobileNetV2 (`features`, `classifier`); its blocks name their layers
`conv.0 ... conv.3` where ours say `block.0 ... block.2`, and `remap_state_dict` translates them. It also
translates timm's `mobilenetv2_100` checkpoints (the same network, its layers named by role).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from reprocls.models import register_model
from reprocls.models._base import linear_head
from reprocls.models._layers import (
    ConvNormAct,
    InvertedResidual,
    PooledDropoutLinear,
    init_conv_and_norm,
    make_divisible,
    remap_timm_mobile,
)

# One row per stage (Sandler et al. 2018, table 2):
# expansion ratio t, output channels c, number of blocks n, stride s of the stage's first block.
STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_WIDTH, HEAD_WIDTH = 32, 1280


class MobileNetV2(PooledDropoutLinear):
    """A stride-2 3x3 stem, 17 inverted residual blocks, a 1x1 conv to 1280 channels, pooling and a linear head.

    `features` holds [stem, block, ..., block, head conv]; `classifier` is [dropout, linear].
    """

    def __init__(
        self,
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
        self.num_features = make_divisible(HEAD_WIDTH * max(1.0, width_mult))  # the paper never thins the head
        layers: list[nn.Module] = [ConvNormAct(in_chans, width, 3, stride=2, act=nn.ReLU6)]
        total_blocks, block_id = sum(n for _, _, n, _ in STAGES), 0
        for t, c, n, s in STAGES:
            out_width = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(
                    InvertedResidual(
                        width, out_width, expanded_channels=int(round(width * t)), stride=s if i == 0 else 1,
                        act=nn.ReLU6, stochastic_depth_prob=stochastic_depth_prob * block_id / total_blocks,
                    )
                )
                width, block_id = out_width, block_id + 1
        layers.append(ConvNormAct(width, self.num_features, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), linear_head(self.num_features, num_classes))
        self.grad_checkpointing = grad_checkpointing
        init_conv_and_norm(self)
        self._init_linear(self.classifier[1])

    @staticmethod
    def _init_linear(layer: nn.Module) -> None:
        """Normal(0, 0.01) weights and zero bias for the dense layers."""
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.zeros_(layer.bias)

    def remap_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """torchvision's `features.i.conv.j` keys to ours; its last conv and BN become our projection's 0 and 1.

        timm's keys (`conv_stem`, `blocks.s.i.conv_pw`, `conv_head`) are translated by `remap_timm_mobile`;
        timm numbers blocks within stages, our `features` is flat.
        """
        if "conv_stem.weight" in state:
            head = len(self.features) - 1
            top_level = {
                "conv_stem": "features.0.0", "bn1": "features.0.1",
                "conv_head": f"features.{head}.0", "bn2": f"features.{head}.1",
                "classifier": "classifier.1",
            }
            return remap_timm_mobile(self, state, top_level, nested_stages=False)
        remapped = {}
        for key, value in state.items():
            match = re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.(.+)", key)
            if match is None:
                remapped[key] = value
                continue
            index, layer, rest = int(match[1]), int(match[2]), match[3]
            projection = len(self.features[index].block) - 1  # torchvision: conv at this index, its BN next
            if layer >= projection:
                layer, rest = projection, f"{layer - projection}.{rest}"
            remapped[f"features.{index}.block.{layer}.{rest}"] = value
        return remapped


@register_model
def mobilenet_v2(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2, 3.5 M parameters (Sandler et al. 2018, "Inverted Residuals and Linear Bottlenecks")."""
    return MobileNetV2(num_classes=num_classes, in_chans=in_chans, **kwargs)
