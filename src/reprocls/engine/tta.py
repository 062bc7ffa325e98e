"""Test-time augmentation: a model's logits averaged over transformed copies of each batch (flips, one-pixel
translations), the evaluation trick of the speed-run recipes. Views are made on the device from the normalised
batch, so any loader works unchanged."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

TTA = Literal["none", "flip", "flip_translate"]
TTA_MODES = ("none", "flip", "flip_translate")
SHIFT = 1  # pixels of translation in flip_translate


def translate(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The batch shifted by (dy, dx) pixels, the uncovered border filled by reflection."""
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
    padded = F.pad(images, pad, mode="reflect")
    h, w = images.shape[-2:]
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top:top + h, left:left + w]


def views(images: torch.Tensor, mode: TTA) -> list[torch.Tensor]:
    """The copies a mode averages over: the batch; with its mirror image; and both shifted by a pixel each way."""
    if mode == "none":
        return [images]
    mirrored = images.flip(-1)
    if mode == "flip":
        return [images, mirrored]
    shifted = [translate(view, d, d) for view in (images, mirrored) for d in (-SHIFT, SHIFT)]
    return [images, mirrored, *shifted]


def tta_logits(model: nn.Module, images: torch.Tensor, mode: TTA = "none") -> torch.Tensor:
    """Mean logits over the mode's views (for 'none', the model's own logits)."""
    batches = views(images, mode)
    if len(batches) == 1:
        return model(images)
    return torch.stack([model(view).float() for view in batches]).mean(0)
