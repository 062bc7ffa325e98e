"""ViT and Swin specifics: position embeddings follow img_size, small-image variants, checkpointing, fidelity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from reprocls import create_model
from reprocls.models import warn_if_input_too_small
from reprocls.models.swin import SwinTransformer
from reprocls.models.vit import DropPath, VisionTransformer, resample_pos_embed


@pytest.mark.parametrize(("name", "img_size", "tokens"), [("vit_ti_16", 64, 1 + 4 * 4), ("vit_ti_4", 28, 1 + 7 * 7)])
def test_position_embedding_follows_img_size(name: str, img_size: int, tokens: int) -> None:
    model = create_model(name, img_size=img_size, in_chans=1)
    assert model.pos_embed.shape == (1, tokens, 192)
    assert model.default_input_size == (1, img_size, img_size)
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 1, img_size, img_size)).shape == (1, tokens, 192)


def test_vit_refuses_inputs_of_another_size() -> None:
    model = create_model("vit_ti_4", img_size=32)
    with pytest.raises(ValueError, match="img_size=28"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        create_model("vit_ti_16", img_size=40)


@pytest.mark.parametrize("name", ["vit_ti_4", "vit_s_4", "swin_t_2"])
@pytest.mark.parametrize("size", [28, 32])
def test_small_image_variants_take_grey_28_and_32_px(name: str, size: int) -> None:
    model = create_model(name, num_classes=10, in_chans=1, img_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)
    assert warn_if_input_too_small(model, size) is None


@pytest.mark.parametrize("name", ["vit_ti_16", "swin_t"])
def test_imagenet_variants_warn_on_small_inputs(name: str) -> None:
    with pytest.warns(UserWarning, match="ImageNet-style stem"):
        warn_if_input_too_small(create_model(name, img_size=64), 64)


def test_swin_features_are_channels_first() -> None:
    model = create_model("swin_t_2", in_chans=1).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 1, 32, 32)).shape == (1, 768, 2, 2)


def tiny_vit(**kwargs) -> VisionTransformer:
    return VisionTransformer(patch_size=4, dim=32, depth=3, num_heads=2, mlp_dim=64, img_size=16, num_classes=5, **kwargs)


def tiny_swin(**kwargs) -> SwinTransformer:
    return SwinTransformer(
        patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4, num_classes=5, **kwargs
    )


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin], ids=["vit", "swin"])
def test_grad_checkpointing_gives_same_outputs_and_gradients(build) -> None:
    """Also with dropout and drop path on: recomputation must replay the same random masks."""
    torch.manual_seed(0)
    regularised = {"dropout": 0.1, "attention_dropout": 0.1, "drop_path_rate": 0.2}
    plain, ckpt = build(**regularised).train(), build(grad_checkpointing=True, **regularised).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 20 if build is tiny_swin else 16, 20 if build is tiny_swin else 16)
    outputs = []
    for model in (plain, ckpt):
        torch.manual_seed(1)
        out = model(x)
        out.logsumexp(1).sum().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[0], outputs[1])
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_vit_matches_torchvision_with_a_random_head(tmp_path: Path) -> None:
    """torchvision starts the head at zero, so the registry-wide fidelity test compares zeros; here it is random."""
    torch.manual_seed(0)
    reference = torchvision.models.VisionTransformer(
        image_size=32, patch_size=4, num_layers=2, num_heads=3, hidden_dim=48, mlp_dim=96, num_classes=5
    ).eval()
    torch.nn.init.normal_(reference.heads.head.weight)
    checkpoint = tmp_path / "vit.pth"
    torch.save(reference.state_dict(), checkpoint)
    ours = VisionTransformer(patch_size=4, dim=48, depth=2, num_heads=3, mlp_dim=96, img_size=32, num_classes=5)
    ours.load_state_dict(ours.remap_state_dict(torch.load(checkpoint, weights_only=True)))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(28, 28), (30, 30), (24, 36)])
def test_swin_matches_torchvision_where_windows_need_padding(size: tuple[int, int]) -> None:
    """Feature maps of 14, 15 or 12x18 tokens: padding to whole windows, odd patch merging, non-square shifts."""
    torch.manual_seed(0)
    reference = torchvision.models.SwinTransformer(
        patch_size=[2, 2], embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=[4, 4], num_classes=5
    ).eval()
    ours = tiny_swin()
    ours.load_state_dict(ours.remap_state_dict(reference.state_dict()))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference(x), atol=1e-5, rtol=1e-5)


def test_checkpoint_of_another_image_size_loads_with_resampled_positions(tmp_path: Path) -> None:
    """Paper section 3.2: fine-tuning at a new resolution interpolates the position embeddings in 2-D."""
    torch.manual_seed(0)
    source = create_model("vit_ti_4", img_size=32)
    checkpoint = tmp_path / "vit_ti_4_32px.pth"
    torch.save(source.state_dict(), checkpoint)
    target = create_model("vit_ti_4", img_size=28, weights=checkpoint)
    assert target.pos_embed.shape == (1, 1 + 7 * 7, 192)
    torch.testing.assert_close(target.pos_embed[:, 0], source.pos_embed[:, 0])  # the class token's is kept
    same = create_model("vit_ti_4", img_size=32, weights=checkpoint)  # our own keys load unchanged
    torch.testing.assert_close(same.pos_embed, source.pos_embed)

    constant = torch.ones(1, 1 + 14 * 14, 8)
    torch.testing.assert_close(resample_pos_embed(constant, (4, 6)), torch.ones(1, 1 + 4 * 6, 8))


def test_drop_path_drops_whole_samples_in_training_only() -> None:
    torch.manual_seed(0)
    layer, x = DropPath(0.5), torch.ones(64, 3, 5)
    out = layer(x)
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample.min(1).values == per_sample.max(1).values).all()
    assert torch.equal(layer.eval()(x), x)


@pytest.mark.parametrize(
    ("name", "params"),
    [("vit_ti_16", 5.717), ("vit_s_16", 22.051), ("vit_b_16", 86.568), ("swin_t", 28.288)],
)
def test_parameter_counts(name: str, params: float) -> None:
    """DeiT-Ti/S (Touvron et al. 2021, table 1: 5 M and 22 M) and torchvision's ViT-B/16 and Swin-T."""
    count = sum(p.numel() for p in create_model(name).parameters()) / 1e6
    assert count == pytest.approx(params, abs=0.001)
