"""Every self-supervised method trains its backbone from two views: the loss falls on real images, gradients reach
the online network only, the momentum target follows it, MoCo's queue fills, and the backbone stays a reprocls model."""

from __future__ import annotations

import pytest
import torch

from reprocls import create_model
from reprocls.data.views import build_view, view_settings
from reprocls.engine.selfsup.losses import nt_xent
from reprocls.engine.selfsup.methods import METHODS, build_method, embed

SMALL = {"simclr": {"hidden": 64, "out": 32}, "moco_v2": {"hidden": 64, "out": 32, "queue_size": 64},
         "byol": {"hidden": 64, "out": 32, "predictor_hidden": 64}}


def two_views(images: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    first, second = (build_view(s, 28, (0.286,), (0.353,)) for s in view_settings(method, 28))
    return torch.stack([first(i) for i in images]), torch.stack([second(i) for i in images])


@pytest.mark.parametrize("method", METHODS.names())
def test_a_few_steps_lower_the_loss_and_train_only_the_online_network(method: str, fmnist_splits) -> None:
    torch.manual_seed(0)
    model = build_method(method, create_model("resnet20", num_classes=10, in_chans=1), **SMALL[method])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    images = fmnist_splits.train.images[:32]
    fixed = two_views(images, method)
    target_before = [p.clone() for p in getattr(model, "target_backbone", model.backbone).parameters()]
    losses = []
    for _ in range(12):  # the same two views each step: a loss that can fall
        loss = model(*fixed, momentum=0.9)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first = 1 if method == "moco_v2" else 0  # MoCo's first step meets a queue of random keys, which are easy
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[first]
    assert all(p.grad is not None for p in model.backbone.parameters())
    if model.uses_momentum:
        assert all(p.grad is None and not p.requires_grad for p in model.target_backbone.parameters())
        moved = [not torch.equal(a, b) for a, b in zip(target_before, model.target_backbone.parameters())]
        assert any(moved)  # it follows the online network
        online = torch.cat([p.flatten() for p in model.backbone.parameters()])
        target = torch.cat([p.flatten() for p in model.target_backbone.parameters()])
        assert not torch.allclose(online, target)  # but lags behind it
    assert embed(model.backbone, fixed[0]).shape == (32, model.backbone.num_features)
    assert model.backbone(fixed[0]).shape == (32, model.backbone.num_features)  # the head is an identity


def test_simclrs_loss_is_nt_xent_of_its_projections(fmnist_splits) -> None:
    torch.manual_seed(0)
    model = build_method("simclr", create_model("resnet20", num_classes=10, in_chans=1), temperature=0.3,
                         **SMALL["simclr"]).eval()
    a, b = two_views(fmnist_splits.train.images[:16], "simclr")
    expected = nt_xent(model.projection(embed(model.backbone, a)), model.projection(embed(model.backbone, b)), 0.3)
    assert torch.allclose(model(a, b), expected)


def test_mocos_queue_takes_both_views_keys_in_training_only(fmnist_splits) -> None:
    torch.manual_seed(0)
    model = build_method("moco_v2", create_model("resnet20", num_classes=10, in_chans=1), **SMALL["moco_v2"])
    a, b = two_views(fmnist_splits.train.images[:8], "moco_v2")
    model(a, b)
    assert int(model.queue.pointer) == 16
    model.eval()
    model(a, b)
    assert int(model.queue.pointer) == 16
    assert {"queue.keys", "queue.pointer"} <= set(model.state_dict())
