"""Our models have the published size and cost: params and MACs agree with paper tables and torchvision.

Counting runs on the meta device (no weights, no arithmetic): the whole table takes seconds, not minutes.
`test_meta_count_equals_real_count` checks that this shortcut gives the same numbers as real tensors.
"""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
import torchvision

from reprocls import create_model, list_models
from reprocls.analysis import count_flops, count_params, family_representatives, measure_complexity
from reprocls.models import MODELS
from reprocls.models._published import PUBLISHED, Published

REGISTERED = set(list_models())
ROWS = [row for row in PUBLISHED if row.name in REGISTERED]
MAC_ROWS = [row for row in ROWS if row.macs_printed is not None]
TORCHVISION_ROWS = [row for row in PUBLISHED if row.source.startswith("torchvision weights metadata")]


@functools.cache
def measured(name: str, input_size: tuple[int, int, int] | None) -> dict:
    return measure_complexity(name, input_size)


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_params_match_published(row: Published) -> None:
    params = measured(row.name, row.input_size)["params"]
    assert row.params_agree(params), (
        f"{row.name}: {params / 1e6:.4f} M parameters, {row.source} gives {row.params_printed} M "
        f"(tolerance {row.params_tolerance():.4f} M)"
    )


@pytest.mark.parametrize("row", MAC_ROWS, ids=lambda row: row.name)
def test_macs_match_published(row: Published) -> None:
    result = measured(row.name, row.input_size)
    assert not result["uncounted_ops"], f"ops without a FLOP formula: {result['uncounted_ops']}"
    assert row.macs_agree(result["macs"]), (
        f"{row.name}: {result['macs'] / 1e9:.4f} GMACs at {row.input_size}, {row.source} gives "
        f"{row.macs_printed} (tolerance {row.macs_tolerance():.4f})"
    )


def test_published_table_has_a_row_for_the_requested_architectures() -> None:
    required = {f"resnet{d}" for d in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110)}
    required |= {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")}
    required |= {"mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "vit_b_16", "vit_b_32", "vit_l_16"}
    required |= {f"efficientnet_b{i}" for i in range(8)} | {"swin_t", "swin_s", "swin_b"}
    required |= {"wrn_28_10", "wrn_40_4", "wrn_16_8"}
    assert required <= {row.name for row in PUBLISHED}
    assert len({row.name for row in PUBLISHED}) == len(PUBLISHED), "a name appears twice"


@pytest.mark.parametrize("row", TORCHVISION_ROWS, ids=lambda row: row.name)
def test_torchvision_rows_match_installed_metadata(row: Published) -> None:
    weights = torchvision.models.get_weight(row.source.split("(")[1].rstrip(")"))
    assert round(weights.meta["num_params"] / 1e6, 6) == row.params_m
    assert weights.meta["_ops"] == pytest.approx(row.macs_g, abs=1e-9)
    assert row.input_size == (3, *[weights.transforms().crop_size[0]] * 2)


def test_two_digit_rows_use_the_papers_rounding() -> None:
    resnet110 = next(row for row in PUBLISHED if row.name == "resnet110")  # "1.7" M: anything that rounds to 1.7
    assert resnet110.params_agree(1_727_962) and resnet110.params_agree(1_650_000)
    assert not resnet110.params_agree(1_760_000)
    resnet50 = next(row for row in PUBLISHED if row.name == "resnet50")  # exact count: 0.5 %
    assert resnet50.params_agree(25_557_032 + 100_000) and not resnet50.params_agree(25_557_032 + 200_000)


# --- attention must be counted --------------------------------------------------------------------------


class SDPA(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.unflatten(-1, (4, 8)).transpose(1, 2)  # (batch, heads=4, tokens, head_dim=8)
        return torch.nn.functional.scaled_dot_product_attention(q, q, q)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_scaled_dot_product_attention_is_counted(device: str) -> None:
    # On CPU the fused kernel has no formula in torch's counter: without ours this counts 0.
    result = count_flops(SDPA().to(device), input_size=(10, 32), batch=3)
    batch, heads, tokens, head_dim = 3, 4, 10, 8
    assert result["macs"] == 2 * batch * heads * tokens * tokens * head_dim  # Q @ K^T and P @ V
    assert result["flops"] == 2 * result["macs"]


def test_multihead_attention_fast_path_is_counted() -> None:
    # nn.MultiheadAttention's eval fast path is one fused op; counted naively it would be 0.
    embed, tokens, batch = 16, 6, 2
    mha = torch.nn.MultiheadAttention(embed, num_heads=2, batch_first=True)

    class SelfAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    result = count_flops(SelfAttention(), input_size=(tokens, embed), batch=batch)
    projections = 4 * batch * tokens * embed * embed  # q, k, v in and the output projection
    attention = 2 * batch * tokens * tokens * embed  # summed over heads
    assert result["macs"] == projections + attention
    assert torch.backends.mha.get_fastpath_enabled(), "count_flops must restore the fast-path setting"


@pytest.mark.skipif("vit_b_16" not in REGISTERED, reason="vit_b_16 not registered yet")
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_vit_count_includes_attention(device: str) -> None:
    size, layers, width = 64, 12, 768  # ViT-B: 12 layers of width 768; 64 px -> 16 patches + class token
    with torch.device(device):
        model = create_model("vit_b_16", img_size=size, num_classes=10)
    result = count_flops(model, (3, size, size))
    tokens = (size // 16) ** 2 + 1
    attention_flops = sum(n for op, n in result["by_op"].items() if "attention" in op or "bmm" in op)
    assert attention_flops == layers * 2 * (2 * tokens * tokens * width)
    assert not result["uncounted_ops"]


@functools.cache
def _representatives() -> dict[str, str]:
    return family_representatives()


@pytest.mark.parametrize("family", sorted(_representatives()))
def test_meta_count_equals_real_count(family: str) -> None:
    name = _representatives()[family]
    kwargs = {"img_size": 32} if "img_size" in inspect.signature(MODELS.get(name)).parameters else {}
    real = create_model(name, **kwargs)
    with torch.device("meta"):
        meta = create_model(name, **kwargs)
    size = (3, 32, 32)
    assert count_params(meta) == count_params(real)
    # the ops may differ (CPU runs fused attention, meta its decomposition), the total may not
    meta_flops, real_flops = count_flops(meta, size)["flops"], count_flops(real, size)["flops"]
    assert meta_flops == real_flops > 0
