"""Optimizers with the usual no-decay parameter groups, and lr schedules composed from torch.optim.lr_scheduler."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.optim import lr_scheduler as sched

from reprocls.config import ConfigError, OptimConfig, ScheduleConfig
from reprocls.engine.lookahead import Lookahead
from reprocls.registry import Registry


def scaled_lr(optim: OptimConfig, batch_size: int) -> float:
    """The recipe's lr rescaled from its reference batch to the real one (linear: Goyal et al. 2017; or sqrt)."""
    if optim.lr_reference_batch is None:
        return optim.lr
    ratio = batch_size / optim.lr_reference_batch
    return optim.lr * (ratio if optim.lr_scaling == "linear" else math.sqrt(ratio))


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool,
                     lr_scales: dict[str, float] | None = None) -> list[dict]:
    """Decay weight matrices and kernels; leave 1-d parameters (norm scales, biases) undecayed unless asked. With
    `lr_scales` (parameter name -> multiplier), one group per multiplier, each with its own "lr_scale"; frozen
    parameters (requires_grad False) are left out."""
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decays = not (param.ndim <= 1 and not decay_norm_and_bias)
            groups.setdefault((decays, (lr_scales or {}).get(name, 1.0)), []).append(param)
    ordered = sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1]))  # decayed first, as before
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
            for (decays, scale), params in ordered]


OptimizerBuilder = Callable[[list[dict], float, OptimConfig], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerBuilder] = Registry("optimizer")


@OPTIMIZERS.register
def sgd(groups: list[dict], lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum, optionally Nesterov's (the classic CNN recipe: He et al. 2016)."""
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


@OPTIMIZERS.register
def adamw(groups: list[dict], lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), the transformer recipe."""
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))


def build_optimizer(model: nn.Module, optim: OptimConfig, lr: float,
                    lr_scales: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """The named optimizer at learning rate `lr` (the recipe's, already scaled to the batch: see scaled_lr), with
    norm weights and biases in an undecayed group unless the recipe decays them, and each group at lr x its
    `lr_scales` multiplier (head and layer-wise rates for fine-tuning)."""
    groups = parameter_groups(model, optim.weight_decay, optim.decay_norm_and_bias, lr_scales)
    if not groups:
        raise ValueError("no parameter trains: every one is frozen (model.freeze leaves nothing to train)")
    optimizer = OPTIMIZERS.get(optim.name)(groups, lr, optim)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    if optim.lookahead_k is not None:
        return Lookahead(optimizer, optim.lookahead_k, optim.lookahead_alpha)
    return optimizer


SchedulerBuilder = Callable[[torch.optim.Optimizer, ScheduleConfig, int, int], sched.LRScheduler]
SCHEDULERS: Registry[SchedulerBuilder] = Registry("schedule")


@SCHEDULERS.register
def cosine(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps: int, steps_per_epoch: int) -> sched.LRScheduler:
    """Half-cosine decay to min_lr_factor (Loshchilov & Hutter 2017, without restarts)."""
    return sched.CosineAnnealingLR(optimizer, T_max=max(steps, 1), eta_min=_base_lr(optimizer) * cfg.min_lr_factor)


@SCHEDULERS.register
def sgdr(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps: int, steps_per_epoch: int) -> sched.LRScheduler:
    """Cosine with warm restarts, cycles growing by restart_mult (SGDR)."""
    return sched.CosineAnnealingWarmRestarts(optimizer, T_0=cfg.restart_epochs * steps_per_epoch, T_mult=cfg.restart_mult,
                                             eta_min=_base_lr(optimizer) * cfg.min_lr_factor)


@SCHEDULERS.register
def step(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps: int, steps_per_epoch: int) -> sched.LRScheduler:
    """Multiply lr by gamma every step_epochs epochs."""
    return sched.StepLR(optimizer, step_size=cfg.step_epochs * steps_per_epoch, gamma=cfg.gamma)


@SCHEDULERS.register
def multistep(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps: int, steps_per_epoch: int) -> sched.LRScheduler:
    """Multiply lr by gamma at each milestone epoch (He et al. 2016: 0.1 at epochs 100 and 150 of 200... in iterations)."""
    return sched.MultiStepLR(optimizer, milestones=[m * steps_per_epoch for m in cfg.milestones], gamma=cfg.gamma)


@SCHEDULERS.register
def onecycle(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps: int, steps_per_epoch: int) -> sched.LRScheduler:
    """Rise to the peak lr then anneal (Smith & Topin 2019); it has its own warmup (pct_start)."""
    if abs(cfg.pct_start * steps - 1) < 1e-9:  # torch's OneCycleLR divides by the rise's length in steps minus one
        raise ConfigError(f"schedule.pct_start: {cfg.pct_start:g} of {steps} optimizer steps makes the one-cycle rise "
                          "exactly one step long, which torch's OneCycleLR cannot compute: change schedule.pct_start, "
                          "train more epochs, or change data.batch_size")
    return sched.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(steps, 1),
                            pct_start=cfg.pct_start, anneal_strategy="cos", cycle_momentum=False)


@SCHEDULERS.register
def constant(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps: int, steps_per_epoch: int) -> sched.LRScheduler:
    """A fixed learning rate."""
    return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _base_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int) -> sched.LRScheduler:
    """The named schedule, stepped once per iteration, preceded by a linear warmup when warmup_epochs > 0."""
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if warmup and cfg.name == "onecycle":
        raise ConfigError("schedule.warmup_epochs: onecycle has its own warmup; set schedule.pct_start instead")
    main = SCHEDULERS.get(cfg.name)(optimizer, cfg, total - warmup, steps_per_epoch)
    if not warmup:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=cfg.warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
