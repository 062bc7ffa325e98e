"""Architecture search spaces (models/spaces.py): every knob's every choice builds a working network, the reference
point is the zoo network it names, and a point becomes ordinary create_model arguments a recipe can carry."""

from __future__ import annotations

import pytest
import torch

from reprocls import create_model
from reprocls.analysis.complexity import measure_complexity
from reprocls.config import load_config
from reprocls.models.spaces import SPACES, model_kwargs_of, space_info
from reprocls.recipe import Shape, build_model


@pytest.mark.parametrize("space", SPACES.names())
def test_every_choice_of_every_knob_builds_a_network_that_trains(space: str) -> None:
    knobs = space_info(space).knobs
    for index in range(max(len(choices) for choices in knobs.values())):  # point i: each knob's i-th choice (cycled)
        point = {knob: choices[index % len(choices)] for knob, choices in knobs.items()}
        name, kwargs = model_kwargs_of(space, point)
        model = create_model(name, **kwargs, in_chans=1, num_classes=10)
        out = model(torch.randn(2, 1, 28, 28))
        out.sum().backward()
        assert out.shape == (2, 10) and torch.isfinite(out).all(), point
        assert all(p.grad is not None for p in model.parameters()), point  # every weight is used


def test_the_resnet_reference_point_is_resnet20() -> None:
    name, kwargs = model_kwargs_of("resnet_cifar", space_info("resnet_cifar").reference)
    found = create_model(name, **kwargs, in_chans=1)
    zoo = create_model("resnet20", in_chans=1)
    assert [(k, v.shape) for k, v in found.state_dict().items()] == [(k, v.shape) for k, v in zoo.state_dict().items()]
    assert measure_complexity(name, (1, 28, 28), in_chans=1, **kwargs)["macs"] == \
        measure_complexity("resnet20", (1, 28, 28), in_chans=1)["macs"] == 30_821_248
    torch.manual_seed(0)
    a = create_model(name, **kwargs, in_chans=1).eval()
    torch.manual_seed(0)
    b = create_model("resnet20", in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(a(x), b(x))  # same modules in the same order: the same function at the same seed


def macs_of(space: str, point: dict) -> int:
    name, kwargs = model_kwargs_of(space, point)
    return measure_complexity(name, (1, 28, 28), in_chans=1, **kwargs)["macs"]


def test_knobs_move_the_cost_the_way_their_names_say() -> None:
    reference = space_info("resnet_cifar").reference
    base = macs_of("resnet_cifar", reference)
    assert macs_of("resnet_cifar", {**reference, "stem_stride": 2}) < 0.3 * base  # a quarter of the pixels
    assert macs_of("resnet_cifar", {**reference, "kernel": 5}) > 2.5 * base  # 25/9 of the convolutions' work
    deeper = macs_of("resnet_cifar", {**reference, "depth3": 5})
    assert macs_of("resnet_cifar", {**reference, "depth1": 1}) < base < deeper
    mobile = space_info("mobilenet").reference
    assert macs_of("mobilenet", {**mobile, "width_mult": 0.5}) < 0.5 * macs_of("mobilenet", mobile)


def test_a_point_is_an_ordinary_recipe_and_bad_points_say_what_is_wrong(tmp_path) -> None:
    point = {**space_info("resnet_cifar").reference, "depth1": 1, "width3": 96, "kernel": 5}
    name, kwargs = model_kwargs_of("resnet_cifar", point)
    recipe = tmp_path / "found.yaml"
    recipe.write_text(f"model: {{name: {name}, kwargs: {kwargs}}}\ndata: {{name: fashion_mnist}}\n")
    model = build_model(load_config(recipe), Shape(10, 1, 28))
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [1, 3, 3] and model.fc.in_features == 96
    assert model.layer1[0].conv1.kernel_size == (5, 5)
    with pytest.raises(ValueError, match=r"depth1: 9 is not one of its choices \[1, 2, 3, 4, 5\]"):
        model_kwargs_of("resnet_cifar", {**point, "depth1": 9})
    with pytest.raises(ValueError, match="missing \\['kernel'\\]"):
        model_kwargs_of("resnet_cifar", {k: v for k, v in point.items() if k != "kernel"})
    with pytest.raises(KeyError, match="Did you mean 'resnet_cifar'"):
        space_info("resnet_cifr")
