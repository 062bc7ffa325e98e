"""Pruning does what it claims: measured sparsity, cumulative amounts, smaller networks that still compute, round trips."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from reprocls import create_model
from reprocls.compress import channels as pruning
from reprocls.compress.channels import channel_widths, prune_channels, rebuild_pruned
from reprocls.compress.prune import iterative_amounts, make_permanent, prune_unstructured, sparsity
from reprocls.models.resnet import BasicBlock

R20 = {"num_classes": 10, "in_chans": 1}
R18 = {"num_classes": 10}


def resnet20() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20", **R20)


def grey_batch() -> torch.Tensor:
    return torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def rgb_batch() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def pruned_resnet20() -> tuple[nn.Module, nn.Module]:
    original = resnet20().eval()
    return original, prune_channels(copy.deepcopy(original), 0.5, grey_batch())


@pytest.fixture(scope="module")
def pruned_resnet18() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    original = create_model("resnet18", **R18).eval()
    return original, prune_channels(copy.deepcopy(original), 0.5, rgb_batch())


# ---------------------------------------------------------------------------------------------- unstructured


def test_global_pruning_reaches_the_amount_overall_and_spreads_unevenly() -> None:
    model = resnet20()
    report = prune_unstructured(model, 0.6)
    assert report.total == sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert report.fraction == pytest.approx(0.6, abs=1 / report.total)
    assert sparsity(model) == report  # the report is a measurement of the model, not an echo of the request
    per_layer = report.per_layer.values()
    assert max(per_layer) - min(per_layer) > 0.1  # one global threshold: layers of small weights lose more


def test_layer_scope_prunes_every_layer_by_the_amount() -> None:
    model = resnet20()
    report = prune_unstructured(model, 0.4, scope="layer")
    assert set(report.layers) == {name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for name, (zeros, total) in report.layers.items():
        assert zeros / total == pytest.approx(0.4, abs=1 / total), name


def test_pruning_is_permanent_and_leaves_a_plain_state_dict() -> None:
    model = resnet20()
    keys = list(model.state_dict())
    prune_unstructured(model, 0.5)
    assert list(model.state_dict()) == keys
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert all(isinstance(m.weight, nn.Parameter) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    create_model("resnet20", **R20).load_state_dict(model.state_dict())  # loads into a fresh, unpruned model


def test_amounts_are_cumulative_targets() -> None:
    model = resnet20()
    prune_unstructured(model, 0.3)
    zero_before = {name: m.weight == 0 for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    report = prune_unstructured(model, 0.5)
    assert report.fraction == pytest.approx(0.5, abs=1e-4)  # not 1 - 0.7 * 0.5 = 0.65
    for name, m in model.named_modules():
        if name in zero_before:
            assert bool((m.weight[zero_before[name]] == 0).all()), name  # earlier zeros stay zero
    assert prune_unstructured(model, 0.2).fraction == pytest.approx(0.5, abs=1e-4)  # nothing is un-pruned


def test_unstructured_pruning_keeps_the_model_running_with_other_outputs() -> None:
    model, x = resnet20().eval(), grey_batch()
    with torch.no_grad():
        before = model(x)
        prune_unstructured(model, 0.5)
        after = model(x)
    assert after.shape == before.shape and torch.isfinite(after).all()
    assert not torch.allclose(after, before)


def test_exclude_patterns_keep_layers_dense() -> None:
    model = resnet20()
    report = prune_unstructured(model, 0.5, exclude=("fc", "layer1"))
    assert "fc" not in report.layers and not any(name.startswith("layer1.") for name in report.layers)
    assert bool((model.fc.weight != 0).all()) and bool((model.layer1[0].conv1.weight != 0).all())
    assert report.fraction == pytest.approx(0.5, abs=1e-4)
    assert "total" in report.summary() and "layer3.2.conv2" in report.summary()


def test_masks_can_stay_during_fine_tuning_then_be_made_permanent() -> None:
    model = resnet20().train()
    prune_unstructured(model, 0.5, permanent=False)
    assert "conv1.weight_mask" in model.state_dict()
    zeros = model.conv1.weight == 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(grey_batch()), torch.tensor([0, 1])).backward()
        optimizer.step()
    model(grey_batch())  # the forward recomputes weight = weight_orig * mask
    assert bool((model.conv1.weight[zeros] == 0).all())
    make_permanent(model)
    assert list(model.state_dict()) == list(resnet20().state_dict())
    assert sparsity(model).fraction == pytest.approx(0.5, abs=1e-4)


def test_iterative_amounts_remove_the_same_share_of_the_survivors() -> None:
    amounts = iterative_amounts(0.5, 3)
    assert amounts == pytest.approx([1 - 0.5 ** (1 / 3), 1 - 0.5 ** (2 / 3), 0.5])
    assert amounts == pytest.approx([0.2063, 0.3700, 0.5], abs=1e-4)
    kept = [1.0, *(1 - a for a in amounts)]
    shares = [kept[i + 1] / kept[i] for i in range(3)]
    assert shares == pytest.approx([shares[0]] * 3)
    assert iterative_amounts(0.9, 1) == [0.9]
    with pytest.raises(ValueError):
        iterative_amounts(1.0, 3)
    with pytest.raises(ValueError):
        iterative_amounts(0.5, 0)


@pytest.mark.parametrize("amount", [-0.1, 1.5])
def test_unstructured_amount_outside_unit_interval_is_refused(amount: float) -> None:
    with pytest.raises(ValueError, match="amount"):
        prune_unstructured(resnet20(), amount)


# ---------------------------------------------------------------------------------------------- structured


def test_resnet20_loses_only_block_internal_channels(pruned_resnet20) -> None:
    original, pruned = pruned_resnet20
    report = pruned.pruning_report
    assert report.macs_kept == pytest.approx(0.5, abs=0.05)
    assert report.params_after < 0.55 * report.params_before
    assert report.params_after == sum(p.numel() for p in pruned.parameters())
    blocks = [m for m in pruned.modules() if isinstance(m, BasicBlock)]
    assert [b.conv2.out_channels for b in blocks] == [16] * 3 + [32] * 3 + [64] * 3  # residual stream intact
    assert [b.bn2.num_features for b in blocks] == [16] * 3 + [32] * 3 + [64] * 3
    assert [b.conv1.out_channels for b in blocks] == [8] * 3 + [16] * 3 + [32] * 3  # inside each block: halved
    assert pruned.conv1.out_channels == 16 and pruned.fc.in_features == 64 and pruned.fc.out_features == 10
    with torch.no_grad():
        out = pruned(grey_batch())
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_resnet20_keeps_the_channels_with_the_largest_weights() -> None:
    model = resnet20().eval()
    block = model.layer1[0]
    with torch.no_grad():  # make channels 0..7 of the block-internal group tiny everywhere they appear
        block.conv1.weight[:8] *= 1e-3
        block.bn1.weight[:8] *= 1e-3
        block.conv2.weight[:, :8] *= 1e-3
    survivors = block.conv1.weight[8:].clone()
    prune_channels(model, 0.5, grey_batch())
    assert torch.equal(model.layer1[0].conv1.weight, survivors)


def test_pruning_leaves_batchnorm_statistics_and_training_mode_alone() -> None:
    model = resnet20().train()
    prune_channels(model, 0.25, grey_batch())
    assert model.training
    assert all(int(m.num_batches_tracked) == 0 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_guard_refuses_the_silent_option_a_mis_prune(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the rule, torch-pruning runs fine but shrinks the tensors entering the zero-pad shortcuts."""
    original = pruning._opaque_channel_layers

    def rule_off(model, example_input, tp):
        _, changers = original(model, example_input, tp)
        return [], changers

    monkeypatch.setattr(pruning, "_opaque_channel_layers", rule_off)
    with pytest.raises(RuntimeError, match="PadShortcut"):
        prune_channels(resnet20(), 0.5, grey_batch())


def test_resnet18_is_pruned_through_its_shortcuts(pruned_resnet18, pruned_resnet20) -> None:
    original, pruned = pruned_resnet18
    report = pruned.pruning_report
    assert report.macs_kept < 0.35 and report.macs_kept < pruned_resnet20[1].pruning_report.macs_kept
    assert report.params_kept < 0.3
    assert report.ignored == ("fc",)
    widths = channel_widths(pruned)
    assert widths["layer4.1.conv2"] == (256, 256) and widths["layer2.0.downsample.0"] == (32, 64)
    assert widths["fc"] == (256, 10) and pruned.num_features == 256  # reset_classifier builds a head that fits
    with torch.no_grad():
        assert pruned(rgb_batch()).shape == (2, 10)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.5, 1.5])
def test_channel_ratio_outside_open_unit_interval_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        prune_channels(resnet20(), ratio, grey_batch())


@pytest.mark.parametrize(
    "fixture, name, kwargs, batch",
    [("pruned_resnet20", "resnet20", R20, grey_batch), ("pruned_resnet18", "resnet18", R18, rgb_batch)],
)
def test_save_and_rebuild_gives_identical_outputs(fixture, name, kwargs, batch, tmp_path, request) -> None:
    _, pruned = request.getfixturevalue(fixture)
    path = tmp_path / "pruned.pt"
    torch.save(pruned.state_dict(), path)
    state = torch.load(path, weights_only=True)
    with pytest.raises(RuntimeError, match="size mismatch"):
        create_model(name, **kwargs).load_state_dict(state)  # why rebuild_pruned exists
    rebuilt = rebuild_pruned(name, state, **kwargs).eval()
    assert channel_widths(rebuilt) == channel_widths(pruned)
    with torch.no_grad():
        assert torch.equal(rebuilt(batch()), pruned.eval()(batch()))
    assert math.isclose(sum(p.numel() for p in rebuilt.parameters()), pruned.pruning_report.params_after)
