"""Our models equal torchvision's: same state dict, same outputs; checkpoints load through create_model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from reprocls import create_model, list_models

TORCHVISION_NAMES = set(torchvision.models.list_models(module=torchvision.models))
SHARED = [n for n in list_models() if n in TORCHVISION_NAMES]


@pytest.mark.parametrize("name", SHARED)
def test_same_outputs_as_torchvision(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    with torch.no_grad():  # zero-initialised heads (ViT) would make any two models agree: randomise them
        for param in reference.parameters():
            if not param.any():
                param.normal_(0, 0.02)
    checkpoint = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), checkpoint)
    ours = create_model(name, num_classes=10, weights=checkpoint).eval()
    size = 224 if name.startswith(("vit", "swin")) else 96
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        difference = (ours(x) - reference(x)).abs().max().item()
    assert difference <= 1e-5


def test_shared_names_cover_the_resnets() -> None:
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} <= set(SHARED)


def test_mismatched_checkpoint_is_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), checkpoint)
    with pytest.raises(ValueError, match="does not fit"):
        create_model("resnet34", weights=checkpoint)


def test_torchvision_prefix_builds_their_model() -> None:
    model = create_model("torchvision/resnet18", num_classes=4)
    assert isinstance(model, torchvision.models.ResNet)
    assert model.fc.out_features == 4
