"""Views made a batch at a time equal torchvision's per-image operations for the same draws, and a global batch's
draws do not depend on how many processes share it."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from reprocls.data.batch_views import (TwoViewTensorLoader, batch_view, colour_jitter, crop_boxes, crop_resize_flip,
                                       draw_view, gaussian_blur)
from reprocls.data.datasets import TensorSplit
from reprocls.data.views import ViewSettings, view_settings


def images(n: int = 6, channels: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_a_whole_image_box_is_the_image_and_a_flip_mirrors_it() -> None:
    x = images().float() / 255
    whole = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).repeat(6, 1)
    assert torch.allclose(crop_resize_flip(x, whole, torch.zeros(6, dtype=torch.bool), 16), x, atol=1e-6)
    assert torch.allclose(crop_resize_flip(x, whole, torch.ones(6, dtype=torch.bool), 16), x.flip(-1), atol=1e-6)
    half = torch.tensor([[4.0, 2.0, 8.0, 8.0]]).repeat(6, 1)  # an 8 px crop kept at 8 px is the plain slice
    assert torch.allclose(crop_resize_flip(x, half, torch.zeros(6, dtype=torch.bool), 8), x[:, :, 4:12, 2:10], atol=1e-6)


def test_crop_boxes_fit_the_image_and_cover_the_asked_share() -> None:
    boxes = crop_boxes(4000, 28, 28, (0.2, 1.0), torch.Generator().manual_seed(1), torch.device("cpu"))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 28).all()
    share = h * w / 28**2
    assert share.min() > 0.15 and share.max() <= 1.0 and 0.5 < share.mean() < 0.7  # uniform in [0.2, 1]: mean 0.6
    assert ((h / w).log().abs() <= torch.tensor(4 / 3).log() + 0.2).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_each_jitter_operation_equals_torchvisions(channels: int) -> None:
    x = images(channels=channels).float() / 255
    everyone = torch.ones(6, dtype=torch.bool)
    in_order = torch.arange(4).repeat(6, 1)
    for which, reference in enumerate((TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)):
        if which >= 2 and channels == 1:
            continue
        factor = torch.rand(6, generator=torch.Generator().manual_seed(which)) * 0.6 + (0.7 if which < 3 else -0.3)
        factors = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(6, 1)  # the identity of every other operation
        factors[:, which] = factor
        ours = colour_jitter(x.clone(), factors, in_order, everyone)
        expected = torch.stack([reference(image, float(f)) for image, f in zip(x, factor)])
        assert torch.allclose(ours, expected, atol=2e-3), reference.__name__


def test_jitter_draws_factors_in_their_ranges_and_an_order_per_image() -> None:
    settings = ViewSettings(jitter=(0.4, 0.3, 0.2, 0.1))
    draws = draw_view(2000, 28, 28, settings, torch.Generator().manual_seed(2), torch.device("cpu"))
    low, high = draws.jitter_factors.min(dim=0).values, draws.jitter_factors.max(dim=0).values
    assert torch.allclose(low, torch.tensor([0.6, 0.7, 0.8, -0.1]), atol=0.01)
    assert torch.allclose(high, torch.tensor([1.4, 1.3, 1.2, 0.1]), atol=0.01)
    assert (draws.jitter_order.sort(dim=1).values == torch.arange(4)).all()  # a permutation of the four
    assert len({tuple(row.tolist()) for row in draws.jitter_order}) == 24  # every order occurs
    assert 0.75 < draws.jittered.float().mean() < 0.85  # jitter_prob 0.8


def test_blur_equals_torchvisions_gaussian_blur_at_the_drawn_sigma() -> None:
    x = images(size=32).float() / 255
    applied = torch.tensor([True, False, True, True, False, True])
    sigma = torch.rand(6, generator=torch.Generator().manual_seed(5)) * 1.9 + 0.1
    ours = gaussian_blur(x, sigma, applied)
    for i in range(6):
        expected = TF.gaussian_blur(x[i], [3, 3], [float(sigma[i])] * 2) if applied[i] else x[i]
        assert torch.allclose(ours[i], expected, atol=1e-5)


def test_a_batch_view_draws_every_augmentation_per_image() -> None:
    x = images(n=64, size=28)
    first, _ = view_settings("byol", 224)  # blur always, jitter 0.8, grey 0.2
    view = batch_view(x, first, 24, torch.Generator().manual_seed(0))
    assert view.shape == (64, 3, 24, 24) and 0 <= view.min() and view.max() <= 1
    grey = (view[:, 0] == view[:, 1]).flatten(1).all(1) & (view[:, 1] == view[:, 2]).flatten(1).all(1)
    assert 3 <= int(grey.sum()) <= 25  # about a fifth of the images greyed, not all or none
    plain = ViewSettings(crop_scale=(1.0, 1.0), hflip_prob=0.0, jitter_prob=0.0, grey_prob=0.0, blur_prob=0.0)
    crops = crop_boxes(64, 28, 28, (1.0, 1.0), torch.Generator().manual_seed(0), torch.device("cpu"))
    exact = crops[:, 2] * crops[:, 3] == 28 * 28  # a full-area crop of ratio 1 is the image itself
    same = batch_view(x, plain, 28, torch.Generator().manual_seed(0))
    assert exact.any() and torch.allclose(same[exact], x[exact].float() / 255, atol=1e-5)
    block = batch_view(x, first, 24, torch.Generator().manual_seed(0), slice(16, 40))
    assert torch.equal(block, view[16:40])  # the whole batch's draws, only the block's images augmented


def test_two_processes_get_the_halves_of_one_processs_views() -> None:
    split = TensorSplit(images(n=40, channels=1, size=28), torch.arange(40))
    first, second = view_settings("simclr", 28)
    common = dict(batch_size=8, size=28, mean=(0.5,), std=(0.25,), device=torch.device("cpu"), seed=3)
    whole = TwoViewTensorLoader(split, first, second, **{**common, "batch_size": 16})
    ranks = [TwoViewTensorLoader(split, first, second, rank=r, world_size=2, **common) for r in (0, 1)]
    for loader in (whole, *ranks):
        loader.set_epoch(2)
    assert len(whole) == len(ranks[0]) == 2
    for single, zero, one in zip(whole, *ranks):
        for part in range(3):
            assert torch.equal(single[part], torch.cat([zero[part], one[part]]))
    resumed = TwoViewTensorLoader(split, first, second, **{**common, "batch_size": 16})
    resumed.set_epoch(2, start=1)
    (later,) = list(resumed)
    assert torch.equal(later[0], list(whole)[1][0])  # a resumed epoch starts at its second batch, the same views
    assert not torch.equal(later[0], later[1])  # two views of one image differ
