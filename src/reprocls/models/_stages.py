"""A model divided into stages in forward order (stem, stages, head), the units fine-tuning freezes and gives
layer-wise learning rates to. One rule serves every family: parameters before the first container of blocks form
the stem; each element of a container (ResNet's layer1, a ViT block, a MobileNet stage) is a stage; layers after
the containers (final norms, head convolutions) are one more stage; the classifier is the head."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reprocls.models._weights import classifier_keys

CONTAINERS = (nn.Sequential, nn.ModuleList)


@dataclass(frozen=True)
class Stage:
    """A named group of parameters, in the order the forward pass reaches them."""

    name: str
    parameters: tuple[str, ...]

    def size(self, model: nn.Module) -> int:
        named = dict(model.named_parameters())
        return sum(named[name].numel() for name in self.parameters)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_block_container(module: nn.Module) -> bool:
    """A Sequential or ModuleList of blocks or stages: two or more children with parameters, or one child that is
    itself built of layers (a stage of a single residual block), not a lone convolution or norm."""
    if not isinstance(module, CONTAINERS):
        return False
    owners = [child for child in module if _has_params(child)]
    return len(owners) >= 2 or (len(owners) == 1 and any(_has_params(inner) for inner in owners[0].children()))


def _params(prefix: str, module: nn.Module, excluded: set[str]) -> tuple[str, ...]:
    return tuple(name for name in (f"{prefix}.{p}" for p, _ in module.named_parameters()) if name not in excluded)


def model_stages(model: nn.Module) -> tuple[list[Stage], Stage]:
    """(backbone stages in forward order, head). With one container of blocks among the top-level children (ViT's
    blocks, Swin's stages, MobileNet's features) each of its children is a stage; with several (ResNet's
    layer1..layer4) each container is. Parameters before the first container, and those registered on the model
    itself (ViT's class token and position embedding), are the stem; those after the last are 'top'."""
    excluded = classifier_keys(model)
    head = Stage("head", tuple(name for name, _ in model.named_parameters() if name in excluded))
    children = [(name, child) for name, child in model.named_children() if _params(name, child, excluded)]
    containers = [name for name, child in children if _is_block_container(child)]
    stem = [name for name, _ in model.named_parameters(recurse=False) if name not in excluded]
    stages: list[Stage] = []
    top: list[str] = []
    for name, child in children:
        owned = _params(name, child, excluded)
        if name in containers and len(containers) == 1:
            stages += [Stage(f"{name}.{inner}", _params(f"{name}.{inner}", block, excluded))
                       for inner, block in child.named_children() if _params(f"{name}.{inner}", block, excluded)]
        elif name in containers:
            stages.append(Stage(name, owned))
        elif not stages:
            stem += owned
        else:
            top += owned
    if stem:
        stages.insert(0, Stage("stem", tuple(stem)))
    if top:
        stages.append(Stage("top", tuple(top)))
    return stages, head
