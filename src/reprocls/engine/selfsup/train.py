"""The pretraining loop, plain like train_one_epoch: two views in, the method's loss, one optimizer step, the
target momentum following its schedule step by step; checkpoints part way through an epoch, and a resumed epoch
continues from the batch after the last one trained."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from reprocls.engine.distributed import all_reduce_sum, on_every_process, unwrap
from reprocls.engine.precision import autocast
from reprocls.engine.selfsup.losses import momentum_at
from reprocls.engine.train import die_if_asked
from reprocls.progress import Progress


@dataclass
class PretrainState:
    """Where pretraining stands: optimizer steps taken of the planned total (the momentum schedule reads both), the
    epoch in progress, its batches already trained and their loss sum on this process, and the finished epochs."""

    step: int = 0
    total_steps: int = 1
    epoch: int = 0
    micro: int = 0
    loss_sum: float = 0.0
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PretrainState:
        return cls(**values)


@dataclass(frozen=True)
class PretrainSettings:
    """How the loop steps, fixed for a run: device and precision, the target's starting momentum, and how often it
    checkpoints and logs."""

    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None
    momentum: float = 0.99
    checkpoint_every: int | None = None  # optimizer steps between checkpoints inside an epoch
    log_every: int = 50
    progress: bool = False


def pretrain_one_epoch(method: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, state: PretrainState, *,
                       scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                       settings: PretrainSettings | None = None, scaler: torch.amp.GradScaler | None = None,
                       checkpoint: Callable[[PretrainState], None] | None = None,
                       log_step: Callable[[int, dict[str, float]], None] | None = None) -> float:
    """One pass over (first, second, label) batches, or the rest of it when `state.micro` says the epoch is under
    way (the loader then starts there); returns the epoch's mean loss over all processes. Labels are never used."""
    settings = settings or PretrainSettings()
    device, core = settings.device, unwrap(method)
    method.train()
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = Progress(total or 0, f"epoch {state.epoch + 1} pretrain", enabled=settings.progress and total is not None)
    bar.skip(state.micro)
    loss_sum = torch.tensor(state.loss_sum, dtype=torch.float64, device=device)
    for first, second, _ in loader:
        current = momentum_at(state.step, state.total_steps, settings.momentum) if core.uses_momentum else 0.0
        first, second = first.to(device, non_blocking=True), second.to(device, non_blocking=True)
        with autocast(device, settings.amp_dtype):
            loss = method(first, second, momentum=current)
        if not on_every_process(bool(torch.isfinite(loss)), device):  # every process stops, not just the one
            raise FloatingPointError(f"pretraining loss is not finite at step {state.step} (this process: "
                                     f"{loss.item()}): lower optim.lr; the checkpoints already written are intact")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        state.step, state.micro = state.step + 1, state.micro + 1
        loss_sum += loss.detach().double()
        if log_step is not None and state.step % settings.log_every == 0:
            log_step(state.step, {"pretrain/loss": loss.item(), "pretrain/lr": optimizer.param_groups[0]["lr"],
                                  "pretrain/momentum": current})
        if checkpoint is not None and settings.checkpoint_every and state.step % settings.checkpoint_every == 0 \
                and (total is None or state.micro < total):
            state.loss_sum = float(loss_sum)
            checkpoint(state)
        die_if_asked(state.step)
        if settings.progress:
            bar.update(first.shape[0], loss=f"{loss.item():.3f}")
    bar.close()
    state.loss_sum = float(loss_sum)
    summed, batches = all_reduce_sum(loss_sum, torch.tensor(float(state.micro), dtype=torch.float64, device=device))
    return float(summed) / max(float(batches), 1.0)
