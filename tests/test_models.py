"""Every registered model honours the shared interface: forward, backward, new heads, grey inputs."""

from __future__ import annotations

import inspect

import pytest
import torch

from reprocls import create_model, list_models
from reprocls.models import MODELS, warn_if_input_too_small
from reprocls.registry import Registry

SIZE = 64


def build(name: str, **kwargs) -> torch.nn.Module:
    """Build at a small test size: models with a fixed token grid are told the image size."""
    if "img_size" in inspect.signature(MODELS.get(name)).parameters or name.startswith(("vit", "swin")):
        kwargs.setdefault("img_size", SIZE)
    return create_model(name, **kwargs)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = build(name, num_classes=7).train()
    x = torch.randn(2, 3, SIZE, SIZE)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


@pytest.mark.parametrize("name", list_models())
def test_interface_and_reset_classifier(name: str) -> None:
    model = build(name, num_classes=7, in_chans=1).eval()
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        features = model.forward_features(x)
        embedding = model.forward_head(features, pre_logits=True)
        assert torch.allclose(model.forward_head(features), model(x), atol=1e-5)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        assert model.get_classifier().out_features == 3
        model.reset_classifier(0)
        assert model(x).shape == embedding.shape


@pytest.mark.parametrize("name", list_models())
def test_num_classes_and_in_chans_are_keywords(name: str) -> None:
    signature = inspect.signature(MODELS.get(name))
    assert signature.parameters["num_classes"].kind is inspect.Parameter.KEYWORD_ONLY
    assert signature.parameters["in_chans"].kind is inspect.Parameter.KEYWORD_ONLY
    assert MODELS.get(name).__doc__, f"{name} needs a one-line docstring naming its paper"


def test_two_functions_under_one_name_fail_but_the_same_function_again_is_a_rerun() -> None:
    registry: Registry = Registry("thing")

    @registry.register
    def alpha() -> None: ...

    def other() -> None: ...

    with pytest.raises(KeyError, match="already registered"):
        registry.register(other, name="alpha")
    assert registry.get("alpha") is alpha

    def alpha() -> None:  # noqa: F811  (a notebook cell run again defines the function anew)
        return None

    registry.register(alpha)
    assert registry.get("alpha") is alpha and len(registry) == 1


def test_unknown_model_suggests_nearest_name() -> None:
    with pytest.raises(KeyError, match="resnet20"):
        create_model("resnet2O")


def test_list_models_filters_by_pattern() -> None:
    assert list_models("resnet1*") == ["resnet101", "resnet110", "resnet152", "resnet18"]


@pytest.mark.parametrize(
    ("name", "params"),
    [("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85), ("resnet110", 1.7)],
)
def test_cifar_resnets_match_paper_table(name: str, params: float) -> None:
    count = sum(p.numel() for p in create_model(name).parameters()) / 1e6
    assert count == pytest.approx(params, abs=0.01 if params < 1 else 0.05)


def test_imagenet_stem_on_small_input_warns() -> None:
    with pytest.warns(UserWarning, match="ImageNet-style stem"):
        warn_if_input_too_small(create_model("resnet18"), 28)
    assert warn_if_input_too_small(create_model("resnet20"), 28) is None
    assert warn_if_input_too_small(create_model("resnet18"), 224) is None


def family_representatives() -> list[str]:
    """The first registered model of each family file, so every family's checkpointing path is exercised."""
    first: dict[str, str] = {}
    for name in list_models():
        first.setdefault(MODELS.get(name).__module__, name)
    return sorted(first.values())


@pytest.mark.parametrize("name", family_representatives())
def test_gradient_checkpointing_changes_nothing_but_memory(name: str) -> None:
    torch.manual_seed(0)
    plain = build(name, num_classes=5).train()
    ckpt = build(name, num_classes=5, grad_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE)
    outputs = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # same dropout / drop-path draws
        out = model(x)
        out.logsumexp(1).sum().backward()
        outputs.append(out)
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert (a.grad is None and b.grad is None) if not a.requires_grad else torch.allclose(a.grad, b.grad, atol=1e-5), n
    for (n, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers()):
        assert torch.equal(a, b), f"{n}: recomputation updated BatchNorm statistics a second time"
