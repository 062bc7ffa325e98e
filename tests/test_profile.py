"""count_flops, profile_model and model_table measure what they claim, on models whose cost we can work out by hand."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from reprocls import create_model, list_models
from reprocls.analysis import count_flops, count_params, model_table, profile_model


def test_linear_and_conv_counts_are_exact() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 5 * 5, 10))
    result = count_flops(model, input_size=(3, 5, 5), batch=2)
    conv = 2 * 8 * 5 * 5 * 3 * 3 * 3  # batch x out channels x positions x in channels x kernel
    linear = 2 * 200 * 10
    assert result["macs"] == conv + linear
    assert result["flops"] == 2 * result["macs"]
    assert count_params(model) == 8 * 27 + 8 + 200 * 10 + 10


def test_count_flops_restores_training_mode_and_counts_in_eval() -> None:
    model = create_model("resnet20").train()
    count_flops(model, (3, 32, 32))
    assert model.training
    assert all(m.num_batches_tracked.item() == 0 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_ops_without_a_formula_are_reported_not_silently_zero() -> None:
    class FusedMHA(nn.Module):  # calls the fused kernel directly, which no formula covers
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = self.mha
            return torch._native_multi_head_attention(
                x, x, x, 16, 2, m.in_proj_weight, m.in_proj_bias, m.out_proj.weight, m.out_proj.bias, need_weights=False
            )[0]

    with pytest.warns(UserWarning, match="no formula"):
        result = count_flops(FusedMHA(), input_size=(5, 16))
    assert result["uncounted_ops"] == ["aten._native_multi_head_attention"]


def test_model_table_lists_registered_models_with_their_default_size() -> None:
    rows = model_table("resnet2*")
    assert [row["name"] for row in rows] == list_models("resnet2*")
    resnet20 = rows[0]
    assert resnet20["input_size"] == (3, 32, 32) and resnet20["family"] == "resnet"
    assert resnet20["params"] == count_params(create_model("resnet20"))
    assert resnet20["macs"] == count_flops(create_model("resnet20"), (3, 32, 32))["macs"]
    classifier = 64 * 10  # the linear head's MACs do not grow with the image
    assert model_table("resnet20", input_size=(3, 64, 64))[0]["macs"] == 4 * (resnet20["macs"] - classifier) + classifier


def test_profile_report_for_a_small_model() -> None:
    model = create_model("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = profile_model(model, batch=4, warmup=1, iters=2, name="resnet20")
    assert report.params == count_params(model) and report.macs == count_flops(model, (3, 32, 32))["macs"]
    assert report.flops == 2 * report.macs and report.input_size == (3, 32, 32)
    assert 0 < report.latency_ms_p50 <= report.latency_ms_p95
    assert report.train_images_per_s > 0
    weights_and_momentum = 2 * 4 * report.params
    assert report.train_peak_memory_bytes > weights_and_momentum  # plus gradients and activations
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "profiling changed the model"
    text = report.format()
    assert "MACs" in text and "FLOPs" in text and "what papers call" in text
    assert json.loads(json.dumps(report.to_dict()))["macs"] == report.macs


def test_cpu_training_memory_is_measured_not_guessed() -> None:
    # One 1000x1000 linear layer: weights (4 MB) + momentum (4 MB) stay resident, the step adds gradients (4 MB).
    model = nn.Linear(1000, 1000)
    report = profile_model(model, input_size=(1000,), batch=1, warmup=1, iters=1)
    weight_bytes = 4 * count_params(model)
    assert 3 * weight_bytes <= report.train_peak_memory_bytes <= 3 * weight_bytes + 2**20
    assert "profiler" in report.memory_method


def test_training_memory_grows_with_batch() -> None:
    small, large = (
        profile_model(create_model("resnet20"), batch=batch, warmup=1, iters=1).train_peak_memory_bytes
        for batch in (2, 32)
    )
    assert large > 4 * small


def test_mixed_precision_and_bad_arguments() -> None:
    report = profile_model(create_model("resnet20"), batch=2, precision="bf16", warmup=0, iters=1)
    assert report.precision == "bf16" and report.train_images_per_s > 0
    with pytest.raises(ValueError, match="precision"):
        profile_model(create_model("resnet20"), precision="int8")  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            profile_model(create_model("resnet20"), device="cuda")


def test_profile_without_training_step() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plain CNN must count without 'no formula' warnings
        report = profile_model(create_model("resnet20"), batch=1, warmup=0, iters=2, train=False)
    assert report.train_images_per_s is None and report.train_peak_memory_bytes is None
    assert "n/a" in report.format()
