"""Exponential moving average of the weights, on torch.optim.swa_utils.AveragedModel, with a decay warmup."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(decay: float, updates: int, warmup: bool) -> float:
    """The decay used for the update after `updates` earlier ones: min(decay, (1 + t) / (10 + t)) with warmup."""
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


def create_ema(model: nn.Module, decay: float, warmup: bool = True) -> AveragedModel:
    """An EMA copy of `model` whose parameters and float buffers (BatchNorm statistics) follow the decay formula."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # counters such as num_batches_tracked are copied, not averaged
            torch._foreach_copy_(averaged, current)
            return
        weight = 1.0 - ema_decay_at(decay, int(num_averaged), warmup)
        torch._foreach_lerp_(averaged, current, weight)

    ema = AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    ema.requires_grad_(False)
    return ema
