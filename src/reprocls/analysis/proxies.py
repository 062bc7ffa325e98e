"""Zero-cost proxies: a score of an untrained network meant to rank architectures before training, and the rank
correlation that says whether one does better than the parameter count (which, in the literature's comparisons,
none of them beats consistently). Add a proxy with `@PROXIES.register`: a function (model, images) -> float."""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import nn

from reprocls.models import count_params
from reprocls.registry import Registry

PROXIES: Registry[Callable[[nn.Module, torch.Tensor], float]] = Registry("zero-cost proxy")
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU)


@PROXIES.register
def params(model: nn.Module, images: torch.Tensor) -> float:
    """The parameter count: the baseline every proxy must beat."""
    return float(count_params(model))


@PROXIES.register
def naswot(model: nn.Module, images: torch.Tensor) -> float:
    """log|det K| of the batch's activation-pattern kernel (Mellor et al. 2021): networks whose units split the
    images into many different on/off patterns score higher."""
    model = copy.deepcopy(model).train()
    codes: list[torch.Tensor] = []
    hooks = [module.register_forward_hook(lambda _m, _i, out: codes.append((out.detach() > 0).flatten(1)))
             for module in model.modules() if isinstance(module, ACTIVATIONS)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    if not codes:
        raise ValueError("naswot: the network has no ReLU-like activation whose on/off pattern it could read")
    binary = torch.cat(codes, dim=1).double()
    kernel = binary @ binary.T + (1 - binary) @ (1 - binary).T
    return float(torch.linalg.slogdet(kernel)[1])


@PROXIES.register
def synflow(model: nn.Module, images: torch.Tensor) -> float:
    """Sum of |theta * dR/dtheta| for R the output sum of the all-positive network on an all-ones input (Tanaka
    et al. 2020, as a NAS proxy in Abdelfattah et al. 2021); data-free, in float64 so deep networks do not overflow."""
    model = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.abs_()
    model.zero_grad(set_to_none=True)
    model(torch.ones_like(images[:1], dtype=torch.float64)).sum().backward()
    return float(sum((p.detach() * p.grad).abs().sum() for p in model.parameters() if p.grad is not None))


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            result[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation; None for fewer than three pairs or a constant side."""
    if len(a) != len(b) or len(a) < 3:
        return None
    x, y = torch.tensor(ranks(a), dtype=torch.float64), torch.tensor(ranks(b), dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    norm = float(x.norm() * y.norm())
    return float(x @ y) / norm if norm > 0 else None
