"""Behaviour specific to the VGG and WideResNet families: paper sizes, dropout, the small-image head, checkpointing."""

from __future__ import annotations

import pytest
import torch

from reprocls import create_model
from reprocls.models import warn_if_input_too_small


def count_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


@pytest.mark.parametrize(("name", "params"), [("wrn_28_10", 36.5), ("wrn_40_4", 8.9), ("wrn_16_8", 11.0)])
def test_wide_resnets_match_paper_table(name: str, params: float) -> None:
    assert count_params(create_model(name, num_classes=10)) == pytest.approx(params, rel=0.01)


def test_wide_resnet_depth_must_be_6n_plus_4() -> None:
    from reprocls.models.wide_resnet import WideResNet

    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(27, 10)


def test_wide_resnet_dropout_acts_only_in_training() -> None:
    torch.manual_seed(0)
    model = create_model("wrn_16_8", dropout=0.3)
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 6  # one per block
    assert not any(isinstance(m, torch.nn.Dropout) for m in create_model("wrn_16_8").modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))


def test_vgg_cifar_head_is_one_linear_layer_on_pooled_features() -> None:
    model = create_model("vgg16", num_classes=10, head="cifar").eval()
    assert model.default_input_size == (3, 32, 32)
    assert count_params(model) == pytest.approx(14.72, abs=0.01)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 512, 1, 1)
        assert model.forward_head(features, pre_logits=True).shape == (2, 512)
        assert model(x).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown VGG head"):
        create_model("vgg11", head="tiny")


def test_vgg_has_no_aggressive_stem() -> None:
    assert warn_if_input_too_small(create_model("vgg11", head="cifar"), 28) is None


@pytest.mark.parametrize(
    ("name", "kwargs", "size"),
    [("wrn_16_8", {"dropout": 0.3}, 32), ("vgg11_bn", {"head": "cifar"}, 32), ("vgg11", {"head": "cifar"}, 32)],
)
def test_gradient_checkpointing_matches_plain_model(name: str, kwargs: dict, size: int) -> None:
    """Same outputs and gradients, and BatchNorm running statistics updated once, not again in recomputation."""
    torch.manual_seed(0)
    plain = create_model(name, num_classes=10, **kwargs).train()
    ckpt = create_model(name, num_classes=10, grad_checkpointing=True, **kwargs).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, size, size)
    outputs = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # the same dropout masks for both
        out = model(x)
        out.logsumexp(1).sum().backward()
        outputs.append(out.detach())
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), n
    for (n, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), n
