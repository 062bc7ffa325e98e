"""The speed-run pieces: Lookahead around an optimizer, the patch-whitening initialisation, SpeedNet's BatchNorm
arguments, and a killed speed-run recipe resuming byte-identical."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reprocls import create_model
from reprocls.config import ConfigError, OptimConfig, ScheduleConfig, load_config
from reprocls.engine import build_optimizer, build_scheduler
from reprocls.engine.lookahead import Lookahead
from reprocls.models import count_params
from reprocls.models._init import patch_whitening, whitening
from reprocls.recipe import prepare

REPO = Path(__file__).parent.parent


def regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Linear(4, 2), torch.randn(16, 4), torch.randn(16, 2)


def steps(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, n: int) -> None:
    for _ in range(n):
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()


def test_lookahead_moves_slow_weights_alpha_of_the_way_every_k_steps() -> None:
    model, x, y = regression()
    reference = copy.deepcopy(model)
    wrapped = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3, alpha=0.5)
    plain = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    slow = [p.detach().clone() for p in reference.parameters()]
    for _ in range(2):  # two lookahead cycles written out by hand
        steps(reference, plain, x, y, 3)
        with torch.no_grad():
            for s, p in zip(slow, reference.parameters()):
                s += 0.5 * (p - s)
                p.copy_(s)
    steps(model, wrapped, x, y, 6)
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(model.weight, regression()[0].weight)  # it trained


def test_lookahead_resumes_exactly_from_its_state_dict_and_follows_the_schedule() -> None:
    model, x, y = regression()
    config = OptimConfig(lr=0.1, momentum=0.9, lookahead_k=4, lookahead_alpha=0.6)
    optimizer = build_optimizer(model, config, 0.1)
    assert isinstance(optimizer, Lookahead)
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="cosine", epochs=1), steps_per_epoch=10)
    steps(model, optimizer, x, y, 5)
    for _ in range(5):
        scheduler.step()
    assert optimizer.base.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] < 0.1  # one set of groups
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), scheduler.state_dict())
    for _ in range(5):  # crosses a sync at step 8 with a half-finished cycle restored, the lr still falling
        steps(model, optimizer, x, y, 1)
        scheduler.step()
    resumed, _, _ = regression(seed=1)
    resumed.load_state_dict(saved[0])
    again = build_optimizer(resumed, config, 0.1)
    again_schedule = build_scheduler(again, ScheduleConfig(name="cosine", epochs=1), steps_per_epoch=10)
    again.load_state_dict(saved[1])
    again_schedule.load_state_dict(saved[2])
    for _ in range(5):
        steps(resumed, again, x, y, 1)
        again_schedule.step()
    assert again.base.param_groups[0]["lr"] == again.param_groups[0]["lr"] == optimizer.base.param_groups[0]["lr"]
    assert torch.equal(resumed.weight, model.weight) and torch.equal(resumed.bias, model.bias)
    with pytest.raises(ValueError, match="k=4"):
        build_optimizer(resumed, OptimConfig(lr=0.1, lookahead_k=5), 0.1).load_state_dict(saved[1])


def test_patch_whitening_decorrelates_patches_to_unit_variance() -> None:
    torch.manual_seed(0)
    mixing = torch.randn(3, 3)
    images = torch.einsum("dc,nchw->ndhw", mixing, torch.randn(64, 3, 12, 12)).contiguous()  # correlated channels
    filters = patch_whitening(images, kernel=2, eps=0.0)
    assert filters.shape == (24, 3, 2, 2)
    assert torch.equal(filters[12:], -filters[:12])
    out = F.conv2d(images, filters[:12]).permute(0, 2, 3, 1).reshape(-1, 12).double()
    covariance = out.T @ out / out.shape[0]
    assert torch.allclose(covariance, torch.eye(12, dtype=torch.float64), atol=1e-3)


def test_whitening_sets_the_speednet_stem_and_refuses_a_stem_of_the_wrong_shape() -> None:
    torch.manual_seed(0)
    model = create_model("speednet_s", num_classes=10, in_chans=1, whiten_kernel=3)
    images = torch.randn(32, 1, 16, 16)
    text = whitening(model, images)
    assert "18 whitening filters of 3x3 patches from 32" in text
    assert torch.allclose(model.stem.weight, patch_whitening(images, 3)) and not model.stem.bias.any()
    assert not model.stem.weight.requires_grad  # frozen: the optimizer never sees it
    with pytest.raises(ValueError, match="2 x in_channels x kernel"):
        whitening(create_model("resnet20", in_chans=1), images)


def test_speednet_batchnorm_arguments_and_sizes() -> None:
    model = create_model("speednet_s", num_classes=10, in_chans=1, bn_momentum=0.4, bn_eps=1e-12, bn_learn_scale=False)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6 and all(m.momentum == 0.4 and m.eps == 1e-12 and not m.weight.requires_grad for m in norms)
    assert all(m.bias.requires_grad for m in norms)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # the sizes the builders' docstrings state, for 3-channel input and 10 classes
    for name, millions in [("speednet_s", 0.30), ("speednet_m", 1.16), ("speednet_l", 1.97)]:
        assert round(count_params(create_model(name)) / 1e6, 2) == millions, name


def test_the_recipe_applies_model_init_and_refuses_it_with_weights_or_an_unknown_name(fmnist_root: Path) -> None:
    config = load_config(str(REPO / "configs/fashion_mnist/speedrun.yaml"),
                         [f"data.root={fmnist_root}", "data.limit_train=600", "data.limit_eval=100",
                          "model.init_images=300"])
    session = prepare(config)
    assert session.init.startswith("18 whitening filters of 3x3 patches from 300 training images")
    images = session.splits.train.images[:300].float().div(255)
    mean, std = session.splits.mean[0], session.splits.std[0]
    assert torch.allclose(session.model.stem.weight.contiguous(), patch_whitening((images - mean) / std, 3), atol=1e-6)
    with pytest.raises(ConfigError, match="model.init: 'wihtening' is not one of the registered inits .none, whitening.. Did you mean 'whitening'"):
        prepare(load_config(str(REPO / "configs/fashion_mnist/speedrun.yaml"), ["model.init=wihtening"]))


@pytest.mark.slow
def test_a_killed_speed_run_resumes_byte_identical(fmnist_root: Path, tmp_path: Path) -> None:
    from test_reliability import SMALL, only_run, same_bytes, train_cli

    # SpeedNet-S, its whitening init, Lookahead with a cycle (k=3) that straddles the step-4 checkpoint, TTA
    overrides = [f"data.root={fmnist_root}", *SMALL, "model.name=speednet_s", "model.init=whitening",
                 "model.init_images=500", "optim.lookahead_k=3", "eval.tta=flip_translate"]
    clean = train_cli(tmp_path / "clean", *overrides)
    assert clean.returncode == 0, clean.stderr[-3000:]
    killed = train_cli(tmp_path / "killed", *overrides, kill_at=6)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = train_cli(tmp_path / "killed", *overrides, extra_args=("--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((only_run(tmp_path / "killed") / "results.json").read_text())
    assert results["resumed_from"] == "step-000000004" and "whitening filters" in results["init"]
    assert same_bytes(only_run(tmp_path / "killed"), only_run(tmp_path / "clean"))
