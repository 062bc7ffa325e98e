"""The two-view presets carry their papers' values, the same as lightly's transforms for large images, and the
pipelines they build do what they say on real images."""

from __future__ import annotations

import pytest
import torch

from reprocls.data.views import VIEWS, ViewSettings, build_view, describe, view_settings

lightly_transforms = pytest.importorskip("lightly.transforms")

LIGHTLY = {"simclr": lambda: lightly_transforms.SimCLRTransform(input_size=224),
           "moco_v2": lambda: lightly_transforms.MoCoV2Transform(input_size=224),
           "byol": lambda: lightly_transforms.BYOLTransform()}


def lightly_settings(view) -> dict:
    """The values a lightly view transform was built with, in ViewSettings' terms."""
    found = {"blur_prob": 0.0, "solarize_prob": 0.0}
    for step in view.transform.transforms:
        name = type(step).__name__
        if name == "RandomResizedCrop":
            found["crop_scale"] = tuple(step.scale)
        elif name == "RandomHorizontalFlip":
            found["hflip_prob"] = step.p
        elif name == "RandomApply":
            jitter = step.transforms[0]
            found["jitter"] = (round(jitter.brightness[1] - 1, 6), round(jitter.contrast[1] - 1, 6),
                               round(jitter.saturation[1] - 1, 6), round(jitter.hue[1], 6))
            found["jitter_prob"] = step.p
        elif name == "RandomGrayscale":
            found["grey_prob"] = step.p
        elif name == "GaussianBlur":
            found["blur_prob"] = step.prob
        elif name == "RandomSolarization":
            found["solarize_prob"] = step.prob
    return found


@pytest.mark.parametrize("method", VIEWS.names())
def test_each_preset_equals_lightlys_transform_for_large_images(method: str) -> None:
    ours = view_settings(method, 224)
    theirs = [lightly_settings(view) for view in LIGHTLY[method]().transforms]
    for mine, reference in zip(ours, theirs):
        assert {key: getattr(mine, key) for key in reference} == reference, method
        assert mine.source


def test_small_images_follow_the_papers_cifar_settings() -> None:
    simclr, _ = view_settings("simclr", 32)
    assert simclr.jitter == (0.4, 0.4, 0.4, 0.1) and simclr.blur_prob == 0  # SimCLR B.9: strength 0.5, no blur
    first, second = view_settings("byol", 32)
    assert first.blur_prob == second.blur_prob == 0 and (first.solarize_prob, second.solarize_prob) == (0, 0.2)
    assert view_settings("moco_v2", 28)[0].crop_scale == (0.2, 1.0)


def test_overrides_apply_to_both_views_and_unknown_ones_are_named() -> None:
    first, second = view_settings("byol", 28, {"crop_scale": (0.5, 1.0), "grey_prob": 0.0})
    assert first.crop_scale == second.crop_scale == (0.5, 1.0) and second.solarize_prob == 0.2
    with pytest.raises(ValueError, match="crop_scal.*known"):
        view_settings("simclr", 28, {"crop_scal": (0.5, 1.0)})


def test_a_view_is_normalised_random_and_leaves_the_input_alone(fmnist_splits) -> None:
    images = fmnist_splits.train.images[:16]
    original = images.clone()
    first, _ = view_settings("simclr", 28)
    view = build_view(first, 28, mean=(0.286,), std=(0.353,))
    torch.manual_seed(0)
    a = torch.stack([view(image) for image in images])
    b = torch.stack([view(image) for image in images])
    assert a.shape == (16, 1, 28, 28) and a.dtype == torch.float32
    assert not torch.allclose(a, b)  # two draws of the same images differ
    assert torch.equal(images, original)
    assert -1.0 < a.mean().item() < 1.0  # normalised, not raw 0-255
    still = build_view(ViewSettings(crop_scale=(1.0, 1.0), hflip_prob=0, jitter_prob=0, grey_prob=0), 28,
                       mean=(0.0,), std=(1.0,))
    assert torch.allclose(still(images[0]), images[0].float() / 255, atol=1e-6)  # everything off: the image itself
    assert "crop 0.08-1" in describe(first) and "SimCLR" in describe(first)
