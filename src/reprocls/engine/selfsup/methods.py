"""SimCLR, MoCo v2 and BYOL around any registered backbone: each is a module whose forward takes the two views and
returns the loss, so the training loop treats them alike. The backbone keeps its classifier interface (head set to
identity), so a pretrained one is saved and fine-tuned like any reprocls model."""

from __future__ import annotations

import copy

import torch
from torch import nn

from reprocls.engine.selfsup.losses import KeyQueue, byol_loss, info_nce, momentum_update, nt_xent
from reprocls.registry import Registry

METHODS: Registry = Registry("self-supervised method")


def mlp(sizes: list[int], *, batchnorm: bool) -> nn.Sequential:
    """Linear layers with ReLU between them (and BatchNorm before each ReLU when asked); no activation at the end."""
    layers: list[nn.Module] = []
    for index, (inputs, outputs) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = index == len(sizes) - 2
        layers.append(nn.Linear(inputs, outputs, bias=last or not batchnorm))
        if not last:
            layers += [nn.BatchNorm1d(outputs)] if batchnorm else []
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def embed(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The backbone's pooled embedding (its classifier's input)."""
    return backbone.forward_head(backbone.forward_features(images), pre_logits=True)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A momentum target: the same weights, never trained by gradients."""
    target = copy.deepcopy(module)
    for parameter in target.parameters():
        parameter.requires_grad_(False)
    return target


def follow_online(method: nn.Module, momentum: float) -> None:
    """The momentum target (backbone and projection) one step closer to the online network."""
    momentum_update(method.target_backbone, method.backbone, momentum)
    momentum_update(method.target_projection, method.projection, momentum)


@torch.no_grad()
def target_outputs(method: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The momentum target's projection of `images`: MoCo's keys, BYOL's regression goals."""
    return method.target_projection(embed(method.target_backbone, images))


class SimCLR(nn.Module):
    """Backbone + projection MLP (BatchNorm, as in SimCLR v1's CIFAR setting); NT-Xent with gathered negatives."""

    uses_momentum = False

    def __init__(self, backbone: nn.Module, *, hidden: int = 512, out: int = 128, temperature: float = 0.5) -> None:
        super().__init__()
        self.backbone, self.temperature = backbone, temperature
        self.projection = mlp([backbone.num_features, hidden, out], batchnorm=True)

    def forward(self, first: torch.Tensor, second: torch.Tensor, momentum: float = 0.0) -> torch.Tensor:
        z1, z2 = self.projection(embed(self.backbone, first)), self.projection(embed(self.backbone, second))
        return nt_xent(z1, z2, self.temperature)


class MoCoV2(nn.Module):
    """Query encoder + momentum key encoder with an MLP head (no BatchNorm, as MoCo v2), InfoNCE against a queue of
    earlier keys; symmetrised over the two views, as lightly's and most CIFAR reproductions do."""

    uses_momentum = True

    def __init__(self, backbone: nn.Module, *, hidden: int = 512, out: int = 128, temperature: float = 0.2,
                 queue_size: int = 4096) -> None:
        super().__init__()
        self.backbone, self.temperature = backbone, temperature
        self.projection = mlp([backbone.num_features, hidden, out], batchnorm=False)
        self.target_backbone, self.target_projection = frozen_copy(self.backbone), frozen_copy(self.projection)
        self.queue = KeyQueue(queue_size, out)

    def forward(self, first: torch.Tensor, second: torch.Tensor, momentum: float = 0.99) -> torch.Tensor:
        follow_online(self, momentum)
        q1, q2 = self.projection(embed(self.backbone, first)), self.projection(embed(self.backbone, second))
        k1, k2 = target_outputs(self, first), target_outputs(self, second)
        queue = self.queue.keys.clone()
        loss = 0.5 * (info_nce(q1, k2, queue, self.temperature) + info_nce(q2, k1, queue, self.temperature))
        if self.training:
            self.queue.push(torch.cat([k1, k2]))
        return loss


class BYOL(nn.Module):
    """Online backbone + projection + prediction against a momentum target (backbone + projection); the
    symmetrised normalised regression of BYOL."""

    uses_momentum = True

    def __init__(self, backbone: nn.Module, *, hidden: int = 1024, out: int = 256, predictor_hidden: int = 1024
                 ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = mlp([backbone.num_features, hidden, out], batchnorm=True)
        self.prediction = mlp([out, predictor_hidden, out], batchnorm=True)
        self.target_backbone, self.target_projection = frozen_copy(self.backbone), frozen_copy(self.projection)

    def forward(self, first: torch.Tensor, second: torch.Tensor, momentum: float = 0.99) -> torch.Tensor:
        follow_online(self, momentum)
        p1 = self.prediction(self.projection(embed(self.backbone, first)))
        p2 = self.prediction(self.projection(embed(self.backbone, second)))
        t1, t2 = target_outputs(self, first), target_outputs(self, second)
        return 0.5 * (byol_loss(p1, t2) + byol_loss(p2, t1))


METHODS.register(SimCLR, name="simclr")
METHODS.register(MoCoV2, name="moco_v2")
METHODS.register(BYOL, name="byol")


def build_method(name: str, backbone: nn.Module, **settings) -> nn.Module:
    """The method `name` around `backbone`, whose classifier is replaced by an identity (the pretrained backbone is
    what a later fine-tuning run loads)."""
    backbone.reset_classifier(0)
    return METHODS.get(name)(backbone, **settings)
