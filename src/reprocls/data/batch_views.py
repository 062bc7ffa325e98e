"""The two views of an in-memory split made a whole batch at a time on the device: the same augmentations as
views.build_view (random resized crop, flip, colour jitter in a random order, grey, blur, solarisation), each
image with its own random draws, but as a few batched tensor operations instead of a Python pipeline per image.
On a 2-core CPU this is what keeps the model, not the augmentation, the bottleneck of pretraining."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterator

import torch
import torch.nn.functional as F

from reprocls.data.datasets import TensorSplit
from reprocls.data.samplers import epoch_order, global_batches
from reprocls.data.views import ViewSettings

CROP_TRIES = 10  # as torchvision's RandomResizedCrop, before falling back to the whole image
GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, torchvision's rgb_to_grayscale


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], generator: torch.Generator,
               device: torch.device, ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """(n, 4) crops (top, left, h, w) drawn as RandomResizedCrop draws them: area share in `scale`, log-uniform
    aspect ratio, the first of 10 tries that fits, else the whole image."""
    area = height * width * _uniform(n * CROP_TRIES, *scale, generator, device).view(n, CROP_TRIES)
    aspect = torch.exp(_uniform(n * CROP_TRIES, math.log(ratio[0]), math.log(ratio[1]), generator, device)).view(n, -1)
    w, h = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(fits.any(dim=1), fits.float().argmax(dim=1), torch.full((n,), -1, device=device))
    chosen = first.clamp_min(0).unsqueeze(1)
    h, w = h.gather(1, chosen).squeeze(1), w.gather(1, chosen).squeeze(1)
    h = torch.where(first >= 0, h, torch.full_like(h, height))
    w = torch.where(first >= 0, w, torch.full_like(w, width))
    top = (torch.rand(n, generator=generator, device=device) * (height - h + 1)).floor()
    left = (torch.rand(n, generator=generator, device=device) * (width - w + 1)).floor()
    return torch.stack([top, left, h, w], dim=1)


def crop_resize_flip(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear crop of each box resized to size x size, mirrored where `flips`; one grid_sample for the batch."""
    n, _, height, width = images.shape
    top, left, h, w = boxes.unbind(1)
    steps = (torch.arange(size, device=images.device, dtype=images.dtype) + 0.5) / size
    ys = top.unsqueeze(1) + steps * h.unsqueeze(1)  # pixel-centre coordinates inside each crop
    xs = left.unsqueeze(1) + steps * w.unsqueeze(1)
    xs = torch.where(flips.unsqueeze(1), xs.flip(1), xs)
    grid_y = (2 * ys / height - 1).view(n, size, 1).expand(n, size, size)
    grid_x = (2 * xs / width - 1).view(n, 1, size).expand(n, size, size)
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grey(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(GREY, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * images + (1 - factor.view(-1, 1, 1, 1)) * other).clamp(0, 1)


def _shift_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by `shift` (a share of the colour circle), through HSV as torchvision does."""
    r, g, b = images.unbind(1)
    high, low = images.max(dim=1).values, images.min(dim=1).values
    span = high - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    hue = torch.where(high == r, ((g - b) / safe) % 6, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(span > 0, hue / 6, torch.zeros_like(hue))
    saturation = torch.where(high > 0, span / torch.where(high > 0, high, torch.ones_like(high)), torch.zeros_like(high))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    sector = hue * 6
    k = lambda offset: (offset + sector) % 6  # noqa: E731
    channel = lambda offset: high - high * saturation * (torch.minimum(k(offset), 4 - k(offset)).clamp(0, 1))  # noqa: E731
    return torch.stack([channel(5), channel(3), channel(1)], dim=1)


def colour_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, applied: torch.Tensor
                  ) -> torch.Tensor:
    """ColorJitter on the images where `applied`: each image's brightness, contrast, saturation and hue factors
    (columns of `factors`) applied in its own order (rows of `order`), as torchvision's ColorJitter does."""
    colour = images.shape[1] == 3
    for position in range(4):
        for operation in range(4):
            chosen = applied & (order[:, position] == operation)
            if not chosen.any() or (operation >= 2 and not colour):
                continue  # saturation and hue leave a one-channel image as it is
            part, factor = images[chosen], factors[chosen, operation]
            if operation == 0:
                part = _blend(part, torch.zeros_like(part), factor)
            elif operation == 1:
                part = _blend(part, _grey(part).mean(dim=(1, 2, 3), keepdim=True).expand_as(part), factor)
            elif operation == 2:
                part = _blend(part, _grey(part).expand_as(part), factor)
            else:
                part = _shift_hue(part, factor)
            images[chosen] = part
    return images


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, applied: torch.Tensor) -> torch.Tensor:
    """A Gaussian blur at each image's `sigma` with a kernel a tenth of the image side, where `applied`."""
    channels, size = images.shape[1], images.shape[-1]
    if not applied.any():
        return images
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
    offsets = torch.arange(kernel, device=images.device, dtype=images.dtype) - kernel // 2
    weights = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma[applied].view(-1, 1) ** 2))
    weights = (weights / weights.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    part = images[applied]
    m = part.shape[0]
    flat = F.pad(part.reshape(1, m * channels, size, size), [kernel // 2] * 4, mode="reflect")
    flat = F.conv2d(flat, weights.view(m * channels, 1, 1, kernel), groups=m * channels)
    flat = F.conv2d(flat, weights.view(m * channels, 1, kernel, 1), groups=m * channels)
    images = images.clone()
    images[applied] = flat.view(m, channels, size, size)
    return images


@dataclass(frozen=True)
class ViewDraws:
    """Every random choice of one view for a batch, one row per image: drawn for a whole global batch, a rank
    keeps its block of rows and augments only its own images."""

    boxes: torch.Tensor  # (n, 4) crops: top, left, height, width
    flips: torch.Tensor
    jittered: torch.Tensor
    jitter_factors: torch.Tensor  # (n, 4) brightness, contrast, saturation, hue
    jitter_order: torch.Tensor  # (n, 4) the order the four are applied in
    greyed: torch.Tensor
    blurred: torch.Tensor
    blur_sigma: torch.Tensor
    solarized: torch.Tensor

    def rows(self, block: slice) -> ViewDraws:
        return ViewDraws(**{field.name: getattr(self, field.name)[block] for field in fields(self)})


def draw_view(n: int, height: int, width: int, settings: ViewSettings, generator: torch.Generator,
              device: torch.device) -> ViewDraws:
    """One view's random choices for n images of height x width, in one fixed order of draws."""
    rand = lambda *shape: torch.rand(*shape, generator=generator, device=device)  # noqa: E731
    boxes = crop_boxes(n, height, width, settings.crop_scale, generator, device)
    flips = rand(n) < settings.hflip_prob
    jittered = rand(n) < settings.jitter_prob
    brightness, contrast, saturation, hue = settings.jitter
    factors = torch.stack([_uniform(n, max(0.0, 1 - brightness), 1 + brightness, generator, device),
                           _uniform(n, max(0.0, 1 - contrast), 1 + contrast, generator, device),
                           _uniform(n, max(0.0, 1 - saturation), 1 + saturation, generator, device),
                           _uniform(n, -hue, hue, generator, device)], dim=1)
    order = rand(n, 4).argsort(dim=1)
    greyed = rand(n) < settings.grey_prob
    blurred = rand(n) < settings.blur_prob
    sigma = _uniform(n, 0.1, 2.0, generator, device)
    solarized = rand(n) < settings.solarize_prob
    return ViewDraws(boxes, flips, jittered, factors, order, greyed, blurred, sigma, solarized)


def apply_view(images: torch.Tensor, draws: ViewDraws, size: int) -> torch.Tensor:
    """The view of a uint8 batch (N, C, H, W) that `draws` (N rows) describe, as floats in [0, 1], not yet
    normalised."""
    view = crop_resize_flip(images.float() / 255, draws.boxes, draws.flips, size)
    view = colour_jitter(view, draws.jitter_factors, draws.jitter_order, draws.jittered)
    if view.shape[1] == 3 and draws.greyed.any():
        view = torch.where(draws.greyed.view(-1, 1, 1, 1), _grey(view).expand_as(view), view)
    view = gaussian_blur(view, draws.blur_sigma, draws.blurred)
    return torch.where(draws.solarized.view(-1, 1, 1, 1) & (view >= 0.5), 1 - view, view)


def batch_view(images: torch.Tensor, settings: ViewSettings, size: int, generator: torch.Generator,
               rows: slice = slice(None)) -> torch.Tensor:
    """One view of the `rows` of a uint8 batch: the draws made for the whole batch, the work done for those rows
    alone, so a block of the result equals that block of the whole batch's view."""
    draws = draw_view(images.shape[0], images.shape[-2], images.shape[-1], settings, generator, images.device)
    return apply_view(images[rows], draws.rows(rows), size)


class TwoViewTensorLoader:
    """(first view, second view, label) batches of an in-memory split, augmented on the device: the random draws
    of a whole global batch are made together and this rank augments only its block of images, so one process
    and several see the same views; shuffling and draws depend on (seed, epoch) only, so any epoch replays, from
    any batch."""

    def __init__(self, split: TensorSplit, first: ViewSettings, second: ViewSettings, *, batch_size: int, size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, seed: int = 0, rank: int = 0,
                 world_size: int = 1, channels_last: bool = False) -> None:
        self.images, self.labels = split.images.to(device), split.labels.to(device)
        self.first, self.second, self.size = first, second, size
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator(device=device)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch to draw, from its batch `start` on (a resumed epoch)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return global_batches(len(self.labels), self.batch_size, self.world_size)

    def _finish(self, view: torch.Tensor) -> torch.Tensor:
        return ((view - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = epoch_order(len(self.labels), self.seed, self.epoch).to(self.labels.device)
        global_size = self.batch_size * self.world_size
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for step in range(len(self)):
            self.generator.manual_seed((self.seed * 100_003 + self.epoch) * 1_000_003 + step)
            if step < self.start:
                continue  # each batch's draws have their own seed: skipping needs no replay
            index = order[step * global_size:(step + 1) * global_size]
            images = self.images[index]
            first = batch_view(images, self.first, self.size, self.generator, mine)
            second = batch_view(images, self.second, self.size, self.generator, mine)
            yield self._finish(first), self._finish(second), self.labels[index][mine]
