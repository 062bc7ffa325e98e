"""The pretraining loop, plain like train_one_epoch: two views in, the method's loss, one optimizer step, the
target momentum following its schedule step by step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from reprocls.engine.selfsup.losses import momentum_at


@dataclass
class PretrainState:
    """Where pretraining stands: optimizer steps taken of the planned total (the momentum schedule reads both)."""

    step: int = 0
    total_steps: int = 1


def pretrain_one_epoch(method: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, state: PretrainState, *,
                       momentum: float = 0.99, device: torch.device = torch.device("cpu"),
                       scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> float:
    """One pass over (first, second, label) batches; returns the mean loss. Labels are never used."""
    method.train()
    total, batches = 0.0, 0
    for first, second, _ in loader:
        current = momentum_at(state.step, state.total_steps, momentum) if method.uses_momentum else 0.0
        loss = method(first.to(device, non_blocking=True), second.to(device, non_blocking=True), momentum=current)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss is {loss.item()} at step {state.step}: lower optim.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        state.step += 1
        total, batches = total + loss.item(), batches + 1
    return total / max(batches, 1)
