"""Per-channel mean and std of a split, the constants Normalize needs."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from reprocls.data.datasets import FileSplit, Split, TensorSplit
from reprocls.data.images import to_mode


def channel_stats(split: Split, *, channels: int = 3, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Mean and std over every pixel of every image, scaled to [0, 1], accumulated in float64."""
    total = squares = None
    count = 0

    def add(images: torch.Tensor) -> None:
        nonlocal total, squares, count
        pixels = images.to(torch.float64).div_(255).transpose(0, 1).reshape(images.shape[1], -1)
        total = pixels.sum(1) if total is None else total + pixels.sum(1)
        squares = pixels.square().sum(1) if squares is None else squares + pixels.square().sum(1)
        count += pixels.shape[1]

    if isinstance(split, TensorSplit):
        for start in range(0, split.images.shape[0], chunk):
            add(split.images[start:start + chunk])
    else:
        assert isinstance(split, FileSplit)
        for path, _ in split.samples:
            with Image.open(path) as image:
                add(TF.pil_to_tensor(to_mode(image, 1 if channels == 1 else 3))[None])
    if count == 0:
        raise ValueError("cannot compute statistics of an empty split")
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()
