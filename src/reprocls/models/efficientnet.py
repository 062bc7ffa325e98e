"""EfficientNet-B0..B7 (Tan & Le 2019): the searched B0 network scaled up in width, depth and resolution together.

Module names follow torchvision's EfficientNet (`features`, `classifier`), so its state dicts load unchanged;
timm's `efficientnet_b0`..`b7` checkpoints (same architecture, named by role) load through `remap_state_dict`.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import nn

from reprocls.models import register_model
from reprocls.models._base import linear_head, run_blocks
from reprocls.models._layers import (
    ConvNormAct,
    InvertedResidual,
    PooledDropoutLinear,
    SqueezeExcite,
    init_conv_and_norm,
    make_divisible,
    match_batchnorm_eps,
    remap_timm_mobile,
)

# The B0 baseline, one row per stage (Tan & Le 2019, table 1): MBConv expansion ratio, kernel,
# stride of the stage's first block, output channels, number of blocks. Every block has squeeze-excite.
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_WIDTH = 32
HEAD_EXPANSION = 4  # the final 1x1 conv widens the last stage 4x (320 -> 1280 in B0)

# Compound scaling (section 3.3) as released: width multiplier, depth multiplier, input resolution (px),
# dropout before the classifier.
SCALING = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}
# torchvision's B5-B7 keep TensorFlow's BatchNorm settings (eps 1e-3, decay 0.99); B0-B4 use PyTorch's defaults.
TF_BATCHNORM = {"norm_eps": 1e-3, "norm_momentum": 0.01}
TIMM_BATCHNORM_EPS = 1e-5  # timm's efficientnet_b0..b7 (not its tf_ ports) use PyTorch's default throughout


class EfficientNet(PooledDropoutLinear):
    """A stride-2 3x3 stem, seven stages of MBConv blocks, a 1x1 conv, pooling and a linear head.

    `features` holds [stem, stage 1, ..., stage 7, head conv] with each stage a sequence of blocks;
    `classifier` is [dropout, linear]. Stochastic depth grows linearly from 0 to `stochastic_depth_prob` over
    the blocks; it is off by default (timm's convention) and belongs to the recipe: the paper trains with 0.2
    (survival 0.8), which is also torchvision's default.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        *,
        input_size: int = 224,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.2,
        stochastic_depth_prob: float = 0.0,
        norm_eps: float = 1e-5,
        norm_momentum: float = 0.1,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.stem_stride, self.default_input_size = 2, (in_chans, input_size, input_size)
        norm = partial(nn.BatchNorm2d, eps=norm_eps, momentum=norm_momentum)
        width = make_divisible(STEM_WIDTH * width_mult)
        layers: list[nn.Module] = [ConvNormAct(in_chans, width, 3, stride=2, norm=norm, act=nn.SiLU)]
        depths = [math.ceil(n * depth_mult) for *_, n in STAGES]
        total_blocks, block_id = sum(depths), 0
        for (ratio, kernel, stride, channels, _), depth in zip(STAGES, depths):
            out_width = make_divisible(channels * width_mult)
            stage = []
            for i in range(depth):
                expanded = make_divisible(width * ratio)
                se = SqueezeExcite(expanded, max(1, width // 4), act=nn.SiLU)  # a quarter of the block's *input* width
                drop = stochastic_depth_prob * block_id / total_blocks
                stage.append(
                    InvertedResidual(
                        width, out_width, expanded_channels=expanded, kernel_size=kernel,
                        stride=stride if i == 0 else 1, act=nn.SiLU, se=se, norm=norm, stochastic_depth_prob=drop,
                    )
                )
                width, block_id = out_width, block_id + 1
            layers.append(nn.Sequential(*stage))
        self.num_features = HEAD_EXPANSION * width
        layers.append(ConvNormAct(width, self.num_features, 1, norm=norm, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout, inplace=True), linear_head(self.num_features, num_classes))
        self.grad_checkpointing = grad_checkpointing
        init_conv_and_norm(self)
        self._init_linear(self.classifier[1])

    @staticmethod
    def _init_linear(layer: nn.Module) -> None:
        """Uniform in +-1/sqrt(classes), the reference implementation's dense initializer."""
        if isinstance(layer, nn.Linear):
            bound = 1.0 / math.sqrt(layer.out_features)
            nn.init.uniform_(layer.weight, -bound, bound)
            nn.init.zeros_(layer.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features[0](x)
        blocks = [block for stage in self.features[1:-1] for block in stage]
        x = run_blocks(blocks, x, self.grad_checkpointing)
        return self.features[-1](x)

    def remap_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept timm's key names (`conv_stem`, `blocks.s.i.conv_dw`, `conv_head`); torchvision's need none.

        timm's `efficientnet_b*` train every BatchNorm with eps 1e-5; our B5-B7 use torchvision's 1e-3, so their
        running variances are shifted to compute the same (`match_batchnorm_eps`). timm's `tf_efficientnet_*`
        ports load too but are not the same function: they pad like TensorFlow ('same', asymmetric at stride 2).
        """
        if "conv_stem.weight" not in state:
            return state
        head = len(self.features) - 1
        top_level = {
            "conv_stem": "features.0.0", "bn1": "features.0.1",
            "conv_head": f"features.{head}.0", "bn2": f"features.{head}.1",
            "classifier": "classifier.1",
        }
        state = remap_timm_mobile(self, state, top_level, nested_stages=True)
        return match_batchnorm_eps(self, state, TIMM_BATCHNORM_EPS)


def _efficientnet(variant: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> EfficientNet:
    width_mult, depth_mult, input_size, dropout = SCALING[variant]
    kwargs.setdefault("dropout", dropout)
    if variant in ("b5", "b6", "b7"):
        for key, value in TF_BATCHNORM.items():
            kwargs.setdefault(key, value)
    return EfficientNet(
        width_mult, depth_mult, input_size=input_size, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


@register_model
def efficientnet_b0(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B0, 5.3 M parameters, 224 px (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling")."""
    return _efficientnet("b0", num_classes, in_chans, kwargs)


@register_model
def efficientnet_b1(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B1, 7.8 M parameters, 240 px (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling")."""
    return _efficientnet("b1", num_classes, in_chans, kwargs)


@register_model
def efficientnet_b2(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B2, 9.1 M parameters, 260 px (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling")."""
    return _efficientnet("b2", num_classes, in_chans, kwargs)


@register_model
def efficientnet_b3(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B3, 12.2 M parameters, 300 px (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling")."""
    return _efficientnet("b3", num_classes, in_chans, kwargs)


@register_model
def efficientnet_b4(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B4, 19.3 M parameters, 380 px (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling")."""
    return _efficientnet("b4", num_classes, in_chans, kwargs)


@register_model
def efficientnet_b5(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B5, 30.4 M parameters, 456 px (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling")."""
    return _efficientnet("b5", num_classes, in_chans, kwargs)


@register_model
def efficientnet_b6(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B6, 43.0 M parameters, 528 px (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling")."""
    return _efficientnet("b6", num_classes, in_chans, kwargs)


@register_model
def efficientnet_b7(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> EfficientNet:
    """EfficientNet-B7, 66.3 M parameters, 600 px (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling")."""
    return _efficientnet("b7", num_classes, in_chans, kwargs)
