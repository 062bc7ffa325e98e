"""MobileNetV2, MobileNetV3 and EfficientNet: checkpointing, stochastic depth and paper facts.

The registry-wide tests (test_models.py, test_fidelity.py) already cover forward/backward, heads and
equality with torchvision; these cover what only the mobile families have.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from reprocls import create_model
from reprocls.models._layers import StochasticDepth, make_divisible

MOBILE = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"] + [f"efficientnet_b{i}" for i in range(8)]


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of activations (not weights) autograd keeps for backward, outside checkpointed regions, in one forward."""
    weights, total = {p.data_ptr() for p in model.parameters()}, 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if tensor.data_ptr() not in weights:
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    return total


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"])
def test_gradient_checkpointing_gives_same_outputs_and_gradients(name: str) -> None:
    """Stochastic depth and dropout on: recomputation must replay the same random draws."""
    torch.manual_seed(0)
    plain = create_model(name, num_classes=10, stochastic_depth_prob=0.3)
    ckpt = create_model(name, num_classes=10, stochastic_depth_prob=0.3, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    outputs = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(1)
        out = model(x)
        out.logsumexp(1).sum().backward()
        outputs.append(out.detach())
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), n
    assert saved_activation_bytes(ckpt, x) < saved_activation_bytes(plain, x) / 2, "checkpointing should save memory"


def test_stochastic_depth_drops_whole_samples_only_in_training() -> None:
    torch.manual_seed(0)
    layer, x = StochasticDepth(0.5), torch.randn(64, 4, 3, 3)
    assert torch.equal(layer.eval()(x), x)
    out = layer.train()(x)
    kept = out.flatten(1).ne(0).any(1)
    assert 0 < kept.sum() < len(x)  # some samples dropped, some kept
    assert torch.allclose(out[kept], 2 * x[kept])  # survivors scaled by 1 / (1 - p)


def test_efficientnet_stochastic_depth_grows_with_depth_and_is_off_in_eval() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=10, dropout=0.0, stochastic_depth_prob=0.2)
    rates = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    residual_rates = [p for p in rates if p > 0]
    assert rates[0] == 0.0 and residual_rates == sorted(residual_rates) and max(rates) < 0.2
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))  # batch statistics are the same; only the drops differ


@pytest.mark.parametrize("name", MOBILE)
def test_parameter_counts_and_metadata_match_torchvision(name: str) -> None:
    """Built on the meta device (no memory, no init cost) and compared with torchvision's published counts."""
    with torch.device("meta"):
        model = create_model(name)
    expected = torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.stem_stride == 2


def test_efficientnet_input_sizes_follow_compound_scaling() -> None:
    sizes = []
    for i in range(8):
        with torch.device("meta"):
            sizes.append(create_model(f"efficientnet_b{i}").default_input_size[1:])
    assert sizes == [(s, s) for s in (224, 240, 260, 300, 380, 456, 528, 600)]


def test_mobilenet_v2_loads_its_own_checkpoint(tmp_path: Path) -> None:
    """remap_state_dict translates torchvision's keys and leaves ours alone."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=10).eval()
    path = tmp_path / "ours.pth"
    torch.save(model.state_dict(), path)
    again = create_model("mobilenet_v2", num_classes=10, weights=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_make_divisible_rounds_to_eight_without_losing_ten_percent() -> None:
    assert [make_divisible(c) for c in (32, 35.2, 36, 16 * 0.75, 12)] == [32, 32, 40, 16, 16]
    assert make_divisible(100 * 0.8, 64) == 128  # 64 would lose 20%: round up instead
