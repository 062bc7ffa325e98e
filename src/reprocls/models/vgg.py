"""VGG (Simonyan & Zisserman 2015): stages of 3x3 convolutions, each closed by a 2x2 max-pool, then an MLP head.

Module names follow torchvision's VGG (`features`, `avgpool`, `classifier`), so its state dicts load unchanged;
timm's VGG checkpoints load through `remap_state_dict`.
The `_bn` variants add BatchNorm after every convolution, as torchvision does (not part of the paper).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from reprocls.models import register_model
from reprocls.models._base import Classifier, checkpoint_block, linear_head

Head = Literal["imagenet", "cifar"]

# Convolutions per stage; the stages have 64, 128, 256, 512 and 512 channels (the paper's table 1).
_DEPTHS = {
    11: (1, 1, 2, 2, 2),  # configuration A
    13: (2, 2, 2, 2, 2),  # configuration B
    16: (2, 2, 3, 3, 3),  # configuration D
    19: (2, 2, 4, 4, 4),  # configuration E
}
_WIDTHS = (64, 128, 256, 512, 512)


class VGG(Classifier):
    """Five stages of 3x3 convolutions (+ BatchNorm) and ReLU, each followed by a 2x2 max-pool, then a head.

    head="imagenet" is the paper's: average-pool to 7x7 (a no-op at 224 px), then Linear 25088->4096, ReLU,
    dropout, Linear 4096->4096, ReLU, dropout, Linear 4096->num_classes; `pre_logits` gives the 4096-d
    embedding and the last Linear is the classifier. head="cifar" is the classic small-image variant for
    32 px inputs (CIFAR, Fashion-MNIST padded or resized to 32): global average pooling of the last 512
    channels (1x1 at 32 px) and a single Linear 512->num_classes (VGG-16 with 10 classes: 14.7 M parameters
    instead of 134 M); `pre_logits` gives the 512-d pooled features. Its checkpoints are not torchvision's.
    """

    stem_stride = 1  # two full-resolution convolutions come before the first pool

    def __init__(
        self,
        depths: tuple[int, ...],
        *,
        batch_norm: bool = False,
        head: Head = "imagenet",
        dropout: float = 0.5,
        num_classes: int = 1000,
        in_chans: int = 3,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self.stage_slices: list[slice] = []  # each stage's layers inside `features`, for checkpointing
        in_planes = in_chans
        for depth, width in zip(depths, _WIDTHS):
            start = len(layers)
            for _ in range(depth):
                layers.append(nn.Conv2d(in_planes, width, 3, padding=1))  # with bias, also before BatchNorm
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                in_planes = width
            layers.append(nn.MaxPool2d(2, stride=2))
            self.stage_slices.append(slice(start, len(layers)))
        self.features = nn.Sequential(*layers)

        self.head_type = head
        if head == "imagenet":
            self.avgpool = nn.AdaptiveAvgPool2d(7)
            self.num_features = 4096
            hidden: list[nn.Module] = [
                nn.Linear(in_planes * 7 * 7, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
            ]
            self.default_input_size = (in_chans, 224, 224)
        elif head == "cifar":
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.num_features = in_planes
            hidden = []
            self.default_input_size, self.designed_input_size = (in_chans, 32, 32), 32
        else:
            raise ValueError(f"unknown VGG head {head!r}: use 'imagenet' or 'cifar'")
        # The last layer of `classifier` is the classifier proper; the layers before it produce the embedding.
        self.classifier = nn.Sequential(*hidden, linear_head(self.num_features, num_classes))
        self.grad_checkpointing = grad_checkpointing
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convolutions, unit BatchNorm, small Gaussian linear layers, zero biases (torchvision's scheme)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            for stage in self.stage_slices:
                x = checkpoint_block(self.features[stage], x)
            return x
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        *hidden, last = self.classifier
        for layer in hidden:
            x = layer(x)
        return x if pre_logits else last(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier[-1] = linear_head(self.num_features, num_classes)

    def remap_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept timm's VGG checkpoints; torchvision's need no change.

        timm's head is a ConvMlp: `pre_logits.fc1` a 7x7 convolution over the 512x7x7 map and `pre_logits.fc2` a
        1x1 convolution, then `head.fc`. On a 7x7 map these are our Linear layers `classifier.0` and `.3`, their
        weights flattened in the (channel, row, column) order of our `torch.flatten`. The outputs agree for
        inputs up to 224 px, where both pool the last map to 7x7 first; on larger maps timm slides the 7x7
        convolution and averages, while we pool to 7x7.
        """
        if "pre_logits.fc1.weight" not in state:
            return state
        renames = {"pre_logits.fc1": "classifier.0", "pre_logits.fc2": "classifier.3", "head.fc": "classifier.6"}
        remapped = {}
        for key, value in state.items():
            layer, _, tensor = key.rpartition(".")
            if layer in renames:
                key = f"{renames[layer]}.{tensor}"
                if tensor == "weight":
                    value = value.flatten(1)  # (out, in, k, k) -> (out, in * k * k); a Linear weight stays as is
            remapped[key] = value
        return remapped


def _vgg(depth: int, batch_norm: bool, num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> VGG:
    return VGG(_DEPTHS[depth], batch_norm=batch_norm, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def vgg11(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-11 (configuration A), 132.9 M parameters (Simonyan & Zisserman 2015, table 2)."""
    return _vgg(11, False, num_classes, in_chans, kwargs)


@register_model
def vgg11_bn(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-11 with BatchNorm after each convolution, 132.9 M parameters (Simonyan & Zisserman 2015)."""
    return _vgg(11, True, num_classes, in_chans, kwargs)


@register_model
def vgg13(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-13 (configuration B), 133.0 M parameters (Simonyan & Zisserman 2015, table 2)."""
    return _vgg(13, False, num_classes, in_chans, kwargs)


@register_model
def vgg13_bn(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-13 with BatchNorm after each convolution, 133.1 M parameters (Simonyan & Zisserman 2015)."""
    return _vgg(13, True, num_classes, in_chans, kwargs)


@register_model
def vgg16(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-16 (configuration D), 138.4 M parameters (Simonyan & Zisserman 2015, table 2)."""
    return _vgg(16, False, num_classes, in_chans, kwargs)


@register_model
def vgg16_bn(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-16 with BatchNorm after each convolution, 138.4 M parameters (Simonyan & Zisserman 2015)."""
    return _vgg(16, True, num_classes, in_chans, kwargs)


@register_model
def vgg19(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-19 (configuration E), 143.7 M parameters (Simonyan & Zisserman 2015, table 2)."""
    return _vgg(19, False, num_classes, in_chans, kwargs)


@register_model
def vgg19_bn(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VGG:
    """VGG-19 with BatchNorm after each convolution, 143.7 M parameters (Simonyan & Zisserman 2015)."""
    return _vgg(19, True, num_classes, in_chans, kwargs)
