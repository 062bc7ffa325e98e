"""MobileNetV3 (Howard et al. 2019): searched inverted residuals with squeeze-excite and h-swish, Large and Small.

Module names follow torchvision's MobileNetV3 (`features`, `classifier`), so its state dicts load unchanged;
timm's `mobilenetv3_large_100` and `mobilenetv3_small_100` checkpoints load through `remap_state_dict`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reprocls.models import register_model
from reprocls.models._base import linear_head
from reprocls.models._layers import (
    ConvNormAct,
    FeatureStack,
    InvertedResidual,
    SqueezeExcite,
    init_conv_and_norm,
    make_divisible,
    match_batchnorm_eps,
    remap_timm_mobile,
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
NORM_EPS, NORM_MOMENTUM = 1e-3, 0.01
TIMM_BATCHNORM_EPS = 1e-5  # timm's mobilenetv3_* (not its tf_ ports) keep PyTorch's default

BlockRow = tuple[int, int, int, bool, type[nn.Module], int]


class MobileNetV3(FeatureStack):
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
        stem_stride: int = 2,
        norm_momentum: float = NORM_MOMENTUM,
    ) -> None:
        super().__init__()
        norm = partial(nn.BatchNorm2d, eps=NORM_EPS, momentum=norm_momentum)
        self.stem_stride, self.default_input_size = stem_stride, (in_chans, 224, 224)
        width = make_divisible(STEM_WIDTH * width_mult)
        layers: list[nn.Module] = [ConvNormAct(in_chans, width, 3, stride=stem_stride, norm=norm, act=HS)]
        for block_id, (kernel, expanded, out, use_se, act, stride) in enumerate(blocks):
            expanded, out = make_divisible(expanded * width_mult), make_divisible(out * width_mult)
            se = None
            if use_se:  # squeeze to a quarter of the expanded width, gate with a hard sigmoid (section 5.3)
                se = SqueezeExcite(expanded, make_divisible(expanded // 4), act=nn.ReLU, gate=nn.Hardsigmoid)
            layers.append(
                InvertedResidual(
                    width, out, expanded_channels=expanded, kernel_size=kernel, stride=stride, act=act, se=se,
                    norm=norm, stochastic_depth_prob=stochastic_depth_prob * block_id / len(blocks),
                )
            )
            width = out
        head_width = 6 * width
        layers.append(ConvNormAct(width, head_width, 1, norm=norm, act=HS))
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

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        hidden, act, dropout, fc = self.classifier
        x = act(hidden(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))
        return x if pre_logits else fc(dropout(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier[3]

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier[3] = linear_head(self.num_features, num_classes)
        self._init_linear(self.classifier[3])

    def remap_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept timm's key names; torchvision's need none.

        timm's last stage is the 1x1 conv to 6x the width (our last `features` entry); its `conv_head` is a 1x1
        convolution with bias applied after pooling, the same map as our hidden Linear, whose weight it
        becomes. timm trains every BatchNorm with eps 1e-5 where ours use 1e-3, so the running variances are
        shifted to compute the same (`match_batchnorm_eps`). timm's `tf_mobilenetv3_*` ports load too but are not
        the same function: they pad like TensorFlow ('same', asymmetric at stride 2).
        """
        if "conv_stem.weight" not in state:
            return state
        top_level = {"conv_stem": "features.0.0", "bn1": "features.0.1", "conv_head": "classifier.0",
                     "classifier": "classifier.3"}
        state = remap_timm_mobile(self, state, top_level, nested_stages=False)
        hidden = state.get("classifier.0.weight")
        if hidden is not None and hidden.ndim == 4:  # (out, in, 1, 1) -> (out, in)
            state["classifier.0.weight"] = hidden.flatten(1)
        return match_batchnorm_eps(self, state, TIMM_BATCHNORM_EPS)


@register_model
def mobilenet_v3_large(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Large, 5.5 M parameters (Howard et al. 2019, "Searching for MobileNetV3")."""
    return MobileNetV3(LARGE, 1280, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def mobilenet_v3_small(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Small, 2.5 M parameters (Howard et al. 2019, "Searching for MobileNetV3")."""
    return MobileNetV3(SMALL, 1024, num_classes=num_classes, in_chans=in_chans, **kwargs)


def stage_rows(depths: tuple[int, ...], widths: tuple[int, ...], expansions: tuple[int, ...],
               kernels: tuple[int, ...], se: tuple[bool, ...], strides: tuple[int, ...]) -> tuple[BlockRow, ...]:
    """Per-stage settings written out as the paper's block table: the first block of a stage carries its stride,
    the first half of the stages use ReLU and the rest h-swish, as in both of the paper's tables."""
    settings = (depths, widths, expansions, kernels, se, strides)
    if len({len(values) for values in settings}) != 1:
        raise ValueError(f"depths, widths, expansions, kernels, se and strides need one entry per stage (got lengths "
                         f"{[len(values) for values in settings]})")
    if min(depths) < 1 or any(k not in (3, 5, 7) for k in kernels) or min(expansions) < 1:
        raise ValueError(f"depths {depths} >= 1, kernels {kernels} of 3, 5 or 7 and expansions {expansions} >= 1")
    rows: list[BlockRow] = []
    for stage, (depth, width, expansion, kernel, use_se, stride) in enumerate(zip(*settings)):
        act = RE if stage < len(depths) // 2 else HS
        rows += [(kernel, width * expansion, width, bool(use_se), act, stride if block == 0 else 1)
                 for block in range(depth)]
    return tuple(rows)


@register_model
def mobilenet_v3_stages(*, depths: tuple[int, ...] = (1, 2, 3, 2), widths: tuple[int, ...] = (16, 24, 40, 80),
                        expansions: tuple[int, ...] = (1, 4, 3, 6), kernels: tuple[int, ...] = (3, 3, 5, 3),
                        se: tuple[bool, ...] = (False, False, True, True), strides: tuple[int, ...] = (1, 2, 2, 2),
                        hidden_width: int = 512, stem_stride: int = 1, num_classes: int = 10, in_chans: int = 3,
                        norm_momentum: float = 0.1, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3 blocks with each stage's depth, expansion, kernel and squeeze-excite free, sized for 28-32 px
    inputs (stride-1 stem) and short schedules: the network behind the mobilenet search space (models/spaces.py).

    BatchNorm keeps PyTorch's momentum 0.1 here, not the TensorFlow reference's 0.01: at 0.01 the running statistics
    trail the weights by a few hundred steps, and after a 4-epoch proxy of 78 steps an epoch the network scored
    chance on validation (train top-1 85 %, val 10 %; 88 % once the statistics were recomputed)."""
    rows = stage_rows(tuple(depths), tuple(widths), tuple(expansions), tuple(kernels), tuple(se), tuple(strides))
    model = MobileNetV3(rows, hidden_width, stem_stride=stem_stride, num_classes=num_classes, in_chans=in_chans,
                        norm_momentum=norm_momentum, **kwargs)
    model.default_input_size, model.designed_input_size = (in_chans, 32, 32), 32
    return model
