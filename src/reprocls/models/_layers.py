"""Building blocks shared by the mobile families: MobileNetV2, MobileNetV3 and EfficientNet.

Submodule names (`block`, `fc1`, `fc2`, numbered conv/norm/act) follow torchvision's, so its state
dicts load into our models unchanged (MobileNetV2 needs one small key remap, see mobilenetv2.py).
timm names the same layers by role (`conv_pw`, `conv_dw`, `se.conv_reduce`, ...); `remap_timm_mobile`
translates its checkpoints of these families.
"""

from __future__ import annotations

import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from reprocls.models._base import Classifier, linear_head, run_blocks

NormLayer = Callable[[int], nn.Module]  # channels -> normalization module, e.g. partial(nn.BatchNorm2d, eps=1e-3)
ActLayer = Callable[..., nn.Module]  # an activation class taking `inplace`: nn.ReLU6, nn.Hardswish, nn.SiLU


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never losing more than 10% (TF-slim's rule)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class FeatureStack(Classifier):
    """torchvision-style `features`: a stem, the blocks (checkpointed when asked), and a final convolution."""

    features: nn.Sequential

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features[0](x)
        x = run_blocks(self.features[1:-1], x, self.grad_checkpointing)
        return self.features[-1](x)


class PooledDropoutLinear(FeatureStack):
    """The head of MobileNetV2 and EfficientNet: global average pool, then `classifier = (Dropout, Linear)`."""

    classifier: nn.Sequential
    num_features: int

    @staticmethod
    def _init_linear(layer: nn.Module) -> None:
        """Each family sets its own dense-layer initialisation."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier[-1] = linear_head(self.num_features, num_classes)
        self._init_linear(self.classifier[-1])


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
        roles: list[str] = []
        if expanded_channels != in_channels:  # an expansion ratio of 1 skips the first 1x1
            layers.append(ConvNormAct(in_channels, expanded_channels, 1, norm=norm, act=act))
            roles.append("expand")
        depthwise = ConvNormAct(expanded_channels, expanded_channels, kernel_size, stride, groups=expanded_channels,
                                norm=norm, act=act)  # one kxk filter per channel
        layers.append(depthwise)
        roles.append("depthwise")
        if se is not None:
            layers.append(se)
            roles.append("se")
        layers.append(ConvNormAct(expanded_channels, out_channels, 1, norm=norm, act=None))  # linear bottleneck
        roles.append("project")
        self.block = nn.Sequential(*layers)
        self.layer_roles = tuple(roles)  # what each layer of `block` does, in order: for mapping foreign checkpoints
        self.use_residual = stride == 1 and in_channels == out_channels
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob if self.use_residual else 0.0)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + self.stochastic_depth(out) if self.use_residual else out


# timm (timm/models/_efficientnet_blocks.py) names each layer of a block by its role; ours number the layers of
# `InvertedResidual.block`, whose `layer_roles` say which number has which role. Per timm block type:
# timm's layer name -> our role and the name inside it.
TIMM_BLOCK_LAYERS = {
    "InvertedResidual": {  # 1x1 expansion, depthwise, squeeze-excite, linear 1x1 projection
        "conv_pw": "expand.0", "bn1": "expand.1", "conv_dw": "depthwise.0", "bn2": "depthwise.1",
        "se.conv_reduce": "se.fc1", "se.conv_expand": "se.fc2", "conv_pwl": "project.0", "bn3": "project.1",
    },
    "DepthwiseSeparableConv": {  # no expansion (ratio 1), so its `conv_pw` is the projection
        "conv_dw": "depthwise.0", "bn1": "depthwise.1",
        "se.conv_reduce": "se.fc1", "se.conv_expand": "se.fc2", "conv_pw": "project.0", "bn2": "project.1",
    },
    "ConvBnAct": {"conv": "0", "bn1": "1"},  # a plain 1x1 conv-BN-act: our ConvNormAct
}
_TIMM_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)\.([a-z_]+)")  # stage, block, layer, tensor


def remap_timm_mobile(
    model: nn.Module, state: dict[str, torch.Tensor], top_level: dict[str, str], *, nested_stages: bool
) -> dict[str, torch.Tensor]:
    """Translate a checkpoint of timm's EfficientNet-style models (EfficientNet, MobileNetV2, MobileNetV3).

    timm keeps `conv_stem`, `bn1`, `blocks.<stage>.<block>.<layer>`, `conv_head`, ...; `top_level` maps the
    layers outside `blocks` to ours (e.g. {"conv_stem": "features.0.0"}). timm's block (s, i) is our
    `features.<s + 1>.<i>` when our `features` nests the stages (`nested_stages`), else the flat
    `features.<1 + blocks in earlier stages + i>`. The block type comes from timm's layer names (only
    InvertedResidual has `conv_pwl`, only ConvBnAct has a bare `conv`). Keys that find no place in the
    model pass through unchanged, so the strict load reports them.
    """
    layers_of: dict[tuple[int, int], set[str]] = {}
    for key in state:
        match = _TIMM_BLOCK_KEY.fullmatch(key)
        if match:
            layers_of.setdefault((int(match[1]), int(match[2])), set()).add(match[3])
    stage_lengths: dict[int, int] = {}
    for stage, index in layers_of:
        stage_lengths[stage] = max(stage_lengths.get(stage, 0), index + 1)

    def our_block_name(stage: int, index: int, layer: str) -> str | None:
        layers = layers_of[(stage, index)]
        kind = "ConvBnAct"
        if "conv_pwl" in layers:
            kind = "InvertedResidual"
        elif "conv_dw" in layers:
            kind = "DepthwiseSeparableConv"
        name = TIMM_BLOCK_LAYERS[kind].get(layer)
        if nested_stages:
            path = f"features.{stage + 1}.{index}"
        else:
            path = f"features.{1 + sum(stage_lengths.get(s, 0) for s in range(stage)) + index}"
        try:
            ours = model.get_submodule(path)
        except AttributeError:
            return None
        if name is None:
            return None
        if kind == "ConvBnAct":
            return f"{path}.{name}" if isinstance(ours, ConvNormAct) else None
        role, inner = name.split(".", 1)
        if not isinstance(ours, InvertedResidual) or role not in ours.layer_roles:
            return None
        return f"{path}.block.{ours.layer_roles.index(role)}.{inner}"

    remapped = {}
    for key, value in state.items():
        layer, _, tensor = key.rpartition(".")
        match = _TIMM_BLOCK_KEY.fullmatch(key)
        if match:
            ours = our_block_name(int(match[1]), int(match[2]), match[3])
            key = key if ours is None else f"{ours}.{match[4]}"
        elif layer in top_level:
            key = f"{top_level[layer]}.{tensor}"
        remapped[key] = value
    return remapped


def match_batchnorm_eps(model: nn.Module, state: dict[str, torch.Tensor], eps: float) -> dict[str, torch.Tensor]:
    """Running variances shifted so that a checkpoint trained with BatchNorm `eps` computes the same in our model.

    Evaluation divides by sqrt(running_var + eps); storing running_var + eps - ours.eps makes our layer (say
    eps 1e-3) divide by exactly what the checkpoint's (say 1e-5) did. A variance below the difference becomes
    slightly negative, which is harmless: the sum under the root stays positive, in training too.
    """
    state = dict(state)
    for name, module in model.named_modules():
        key = f"{name}.running_var"
        if isinstance(module, nn.BatchNorm2d) and module.eps != eps and key in state:
            state[key] = state[key] + (eps - module.eps)
    return state


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
