"""Optimizer groups, lr scaling, schedules and train/eval modes do what the recipe says."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reprocls import create_model
from reprocls.config import ConfigError, OptimConfig, ScheduleConfig
from reprocls.engine import (OPTIMIZERS, SCHEDULERS, Trainee, TrainSettings, build_optimizer, build_scheduler, evaluate,
                             resolve_precision, scaled_lr, train_one_epoch)
from reprocls.engine.optim import parameter_groups
from reprocls.engine.precision import cpu_supports_bf16, resolve_channels_last

CPU = torch.device("cpu")


def test_norm_and_bias_are_not_decayed_by_default() -> None:
    model = create_model("resnet20")
    decay, no_decay = parameter_groups(model, 5e-4, decay_norm_and_bias=False)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 5e-4
    assert len(parameter_groups(model, 5e-4, decay_norm_and_bias=True)) == 1


@pytest.mark.parametrize(("rule", "expected"), [("linear", 0.4), ("sqrt", 0.2)])
def test_lr_is_rescaled_to_the_batch(rule: str, expected: float) -> None:
    optim = OptimConfig(lr=0.1, lr_reference_batch=128, lr_scaling=rule)
    assert scaled_lr(optim, 512) == pytest.approx(expected)
    assert scaled_lr(OptimConfig(lr=0.1), 512) == 0.1


def lrs(schedule: ScheduleConfig, steps_per_epoch: int = 10, lr: float = 1.0) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = build_scheduler(optimizer, schedule, steps_per_epoch)
    values = []
    for _ in range(schedule.epochs * steps_per_epoch):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_linear_warmup_then_cosine() -> None:
    values = lrs(ScheduleConfig(name="cosine", epochs=10, warmup_epochs=2, warmup_start_factor=0.1))
    assert values[0] == pytest.approx(0.1)
    assert values[20] == pytest.approx(1.0)  # peak right after warmup
    assert all(a <= b + 1e-12 for a, b in zip(values[:20], values[1:21]))  # rising
    assert values[-1] < 0.01


def test_multistep_decays_at_milestone_epochs() -> None:
    values = lrs(ScheduleConfig(name="multistep", epochs=6, milestones=[2, 4], gamma=0.1))
    assert values[19] == pytest.approx(1.0) and values[20] == pytest.approx(0.1) and values[40] == pytest.approx(0.01)


def test_sgdr_restarts() -> None:
    values = lrs(ScheduleConfig(name="sgdr", epochs=6, restart_epochs=2, restart_mult=2))
    assert values[20] == pytest.approx(1.0) and values[19] < 0.1  # restart after the first 2-epoch cycle


def test_onecycle_peaks_at_pct_start() -> None:
    values = lrs(ScheduleConfig(name="onecycle", epochs=4, pct_start=0.25))
    assert max(values) == pytest.approx(1.0, rel=1e-3)
    assert abs(values.index(max(values)) - 10) <= 1
    with pytest.raises(ConfigError, match="pct_start"):
        lrs(ScheduleConfig(name="onecycle", epochs=4, warmup_epochs=1))


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_every_schedule_stays_positive_and_finite(name: str) -> None:
    values = lrs(ScheduleConfig(name=name, epochs=4, warmup_epochs=0 if name == "onecycle" else 1, min_lr_factor=0.01))
    assert all(math.isfinite(v) and v > 0 for v in values)


def test_precision_choices() -> None:
    assert resolve_precision("fp32", CPU) is None
    assert resolve_precision("bf16", CPU) is torch.bfloat16
    assert resolve_precision("auto", CPU) is (torch.bfloat16 if cpu_supports_bf16() else None)
    assert resolve_channels_last("auto", create_model("resnet20")) is True
    assert resolve_channels_last("no", create_model("resnet20")) is False


def test_adamw_and_nesterov_settings() -> None:
    model = nn.Linear(4, 2)
    sgd = build_optimizer(model, OptimConfig(name="sgd", nesterov=True, lr=0.1), 0.1)
    assert sgd.defaults["nesterov"] is True and sgd.defaults["lr"] == 0.1
    adamw = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, betas=[0.9, 0.95], weight_decay=0.05), 2e-3)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.95)
    assert adamw.defaults["lr"] == 2e-3  # the lr given (lr_plan's, scaled to the batch), not the recipe's own


def test_every_registered_optimizer_builds_with_undecayed_norm_and_bias_groups() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    for name in OPTIMIZERS.names():
        optimizer = build_optimizer(model, OptimConfig(name=name, weight_decay=0.1), 0.05)
        decays = sorted(group["weight_decay"] for group in optimizer.param_groups)
        assert decays == [0.0, 0.1] and all(group["lr"] == 0.05 for group in optimizer.param_groups), name


class ListLoader(list):
    def set_epoch(self, epoch: int, start: int = 0) -> None: ...


def test_train_uses_batch_stats_and_evaluate_does_not_change_them() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3, in_chans=1)
    data = ListLoader([(torch.randn(8, 1, 16, 16), torch.randint(0, 3, (8,))) for _ in range(3)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    before = model.bn1.running_mean.clone()
    train_one_epoch(Trainee(model, optimizer, scheduler, nn.CrossEntropyLoss()), data, TrainSettings(device=CPU, progress=False))
    after_train = model.bn1.running_mean.clone()
    assert not torch.equal(before, after_train)  # training updated BatchNorm statistics
    result = evaluate(model, data, device=CPU, amp_dtype=None, num_classes=3, progress=False)
    assert not model.training
    assert torch.equal(after_train, model.bn1.running_mean)  # evaluation left them alone
    assert result.samples == 24 and int(result.confusion.sum()) == 24


def test_non_finite_loss_stops_with_the_step() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    data = ListLoader([(torch.full((2, 4), float("nan")), torch.tensor([0, 1]))])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    with pytest.raises(FloatingPointError, match="step 1;"):
        train_one_epoch(Trainee(model, optimizer, scheduler, nn.CrossEntropyLoss()), data, TrainSettings(device=CPU, progress=False))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_onecycle_rise_of_exactly_one_step_is_refused_naming_pct_start() -> None:
    with pytest.raises(ConfigError, match=r"schedule.pct_start: 0.25 of 4 optimizer steps.*exactly one step"):
        lrs(ScheduleConfig(name="onecycle", epochs=1, pct_start=0.25), steps_per_epoch=4)
    values = lrs(ScheduleConfig(name="onecycle", epochs=1, pct_start=0.25), steps_per_epoch=8)  # rise of 2 steps
    assert max(values) == pytest.approx(1.0) and values[0] < values[1] and values[-1] < values[2]
    shorter = lrs(ScheduleConfig(name="onecycle", epochs=1, pct_start=0.25), steps_per_epoch=3)  # no rise: anneals only
    assert shorter == sorted(shorter, reverse=True) and shorter[0] <= 1.0
