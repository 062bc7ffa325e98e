"""timm checkpoints load into our models of the same architecture, and then compute the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from reprocls import create_model

timm = pytest.importorskip("timm", reason="timm is an optional extra (pip install 'reprocls[timm]')")

# (timm name, our name, input size): 224 px only where the model is built for it (a ViT's position embedding).
PAIRS = [
    ("resnet18", "resnet18", 64),
    ("resnet50", "resnet50", 64),
    ("vgg16_bn", "vgg16_bn", 64),
    ("mobilenetv2_100", "mobilenet_v2", 64),
    ("mobilenetv3_large_100", "mobilenet_v3_large", 64),
    ("mobilenetv3_small_100", "mobilenet_v3_small", 64),
    ("efficientnet_b0", "efficientnet_b0", 64),
    ("vit_tiny_patch16_224", "vit_ti_16", 224),
    ("vit_small_patch16_224", "vit_s_16", 224),
    ("swin_tiny_patch4_window7_224", "swin_t", 224),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Each comparison is a few small forward passes: one thread is enough and leaves the other cores alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def timm_reference(name: str, size: int) -> nn.Module:
    """A timm model, 10 classes, whose every parameter and BatchNorm statistic matters to its output."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    with torch.no_grad():
        for param in model.parameters():  # zero-initialised layers would make any two models agree there
            if not param.any():
                param.normal_(0, 0.02)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms:  # running statistics of real activations, far from (0, 1), that keep the outputs input-dependent
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a plain average over the batches below
            model.train()
            for _ in range(3):
                model(torch.randn(4, 3, size, size) * 2 + 0.5)
    return model.eval()


def max_difference(ours: nn.Module, reference: nn.Module, size: int) -> float:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(x) - reference(x)).abs().max().item()


@pytest.mark.parametrize("timm_name, name, size", PAIRS, ids=[pair[1] for pair in PAIRS])
def test_timm_checkpoint_gives_same_outputs(timm_name: str, name: str, size: int, tmp_path: Path) -> None:
    reference = timm_reference(timm_name, size)
    checkpoint = tmp_path / f"{timm_name}.pth"
    torch.save(reference.state_dict(), checkpoint)
    ours = create_model(name, num_classes=10, weights=checkpoint).eval()
    assert max_difference(ours, reference, size) <= 1e-4


def test_swin_checkpoint_in_the_authors_layout(tmp_path: Path) -> None:
    """The authors' (and older timm's) layout: merging closes a stage, the head is `head`, derived buffers saved."""
    reference = timm_reference("swin_tiny_patch4_window7_224", 224)
    state = {}
    for key, value in reference.state_dict().items():
        for stage in (1, 2, 3):
            key = key.replace(f"layers.{stage}.downsample.", f"layers.{stage - 1}.downsample.")
        state[key.replace("head.fc.", "head.")] = value
    for name, buffer in reference.named_buffers():  # timm no longer saves these; the old checkpoints did
        if name.endswith(("relative_position_index", "attn_mask")):
            state[name] = buffer
    assert "layers.0.downsample.reduction.weight" in state and any(k.endswith("attn_mask") for k in state)
    checkpoint = tmp_path / "swin_authors.pth"
    torch.save(state, checkpoint)
    ours = create_model("swin_t", num_classes=10, weights=checkpoint).eval()
    assert max_difference(ours, reference, 224) <= 1e-4


@pytest.mark.parametrize("timm_name, name", [("resnet18", "resnet34"), ("swin_tiny_patch4_window7_224", "swin_s")])
def test_timm_checkpoint_of_another_architecture_is_refused(timm_name: str, name: str, tmp_path: Path) -> None:
    checkpoint = tmp_path / f"{timm_name}.pth"
    torch.save(timm.create_model(timm_name, pretrained=False).state_dict(), checkpoint)
    with pytest.raises(ValueError, match="does not fit"):
        create_model(name, weights=checkpoint)
